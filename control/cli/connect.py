"""``imctl connect``: run the reference client (``control.cli.client``) as a user."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from control.cli.context import EXIT_UNAVAILABLE, fail, server
from control.cli.tokens import token_minter
from control.common.tls import CertificateError


def cmd_connect(args: argparse.Namespace) -> int:
    from control.cli.client import run

    token: Callable[[], str | None]
    if args.token:
        given = str(args.token)
        token = lambda: given  # noqa: E731
    else:
        # A fresh token for every ask, so a client that runs for days never presents an
        # expired one; trust mode needs none.
        minter, settings, _ = token_minter(args.config)
        trusting = settings.client_auth.mode == "trust"
        token = lambda: None if trusting else minter(args.uid, 3600)  # noqa: E731
    try:
        return asyncio.run(
            run(
                server(args),
                args.uid,
                args.device,
                args.platform,
                args.version,
                args.region,
                output=args.output,
                token=token,
                cafile=args.cacert,
            )
        )
    except (
        OSError,
        CertificateError,
    ) as exc:  # failures the client does not retry (it retries the network's)
        return fail(f"cannot connect: {exc}", EXIT_UNAVAILABLE)
