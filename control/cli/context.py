"""What every verb needs from its command line: the exit codes, the one-line failure, the
config it names, and the admin client for ``--server`` and ``--token``."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from control.cli.admin_client import AdminClient, AdminError
from control.cli.args import server_url
from control.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1

Verb = Callable[[argparse.Namespace], int]


def fail(message: str, code: int) -> int:
    """Print ``imctl: message`` to stderr; ``code``, to return or raise as SystemExit."""
    print(f"imctl: {message}", file=sys.stderr)
    return code


def default_local_config() -> Path:
    """The packaged config ``imctl up`` runs when given none."""
    return Path(str(resources.files("control") / "data" / "local.yaml"))


def load(path: str | None) -> Settings:
    return load_settings(path)


def server(args: argparse.Namespace) -> str:
    """The scheduler's base URL: ``--server``, else $IMCTL_SERVER, else the config's."""
    if args.server:
        return str(args.server)
    if os.environ.get("IMCTL_SERVER"):
        try:
            return server_url(os.environ["IMCTL_SERVER"])
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(fail(f"IMCTL_SERVER: {exc}", EXIT_USAGE)) from None
    settings = load(args.config) if args.config else load_settings(None)
    host = settings.scheduler.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"{settings.scheduler.tls.scheme}://{host}:{settings.scheduler.port}"


def admin(args: argparse.Namespace) -> AdminClient:
    """The admin client for this command line (token: ``--token``, else $IMCTL_TOKEN)."""
    return AdminClient(
        server(args), args.token or os.environ.get("IMCTL_TOKEN"), cafile=args.cacert
    )


def operator_verb(verb: Verb) -> Verb:
    """A verb that reads the admin API: a failed call is its one line and exit 1, and an
    answer of another shape (``--server`` pointing at something else) is one clear line,
    not a traceback."""

    @functools.wraps(verb)
    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except AdminError as exc:
            raise SystemExit(fail(str(exc), EXIT_UNAVAILABLE)) from None
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise SystemExit(
                fail(
                    f"unexpected answer from {server(args)} ({exc!r}): is it an imctl scheduler?",
                    EXIT_UNAVAILABLE,
                )
            ) from None

    return run
