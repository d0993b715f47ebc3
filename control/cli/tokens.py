"""``imctl token``: client tokens minted from the config's development key."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from control.cli.context import EXIT_USAGE, default_local_config, fail, load
from control.settings import Settings

Minter = Callable[[str, float], str]  # (uid, lifetime in seconds) -> token


def token_minter(config: str | None) -> tuple[Minter, Settings, str]:
    """A function minting client tokens from ``config``'s development key (default: the
    config ``imctl up`` runs); SystemExit with one clear line when it has none."""
    from control.common.client_auth import mint

    path = config or str(default_local_config())
    settings = load(path)
    auth = settings.client_auth
    if auth.mode == "callback":
        raise SystemExit(
            fail(
                f"{path}: client_auth.mode is callback: tokens come from the app's auth "
                f"service ({auth.callback.url}), not from imctl",
                EXIT_USAGE,
            )
        )
    key = auth.minting_key()
    if key is None:
        raise SystemExit(
            fail(
                f"{path}: client_auth.keys has no HS256 secret to sign tokens with (tokens "
                "for RS256/ES256 or JWKS keys come from the app's backend)",
                EXIT_USAGE,
            )
        )
    kid, secret = key

    def minter(uid: str, ttl: float) -> str:
        return mint(uid, secret, kid, ttl, audience=auth.audience, issuer=auth.issuer)

    return minter, settings, path


def cmd_token(args: argparse.Namespace) -> int:
    minter, settings, path = token_minter(args.config)
    if settings.client_auth.mode == "trust":
        print(
            f"imctl: note: {path} has client_auth.mode trust; the scheduler ignores tokens",
            file=sys.stderr,
        )
    for uid in args.uid:
        print(minter(uid, args.ttl))
    return 0
