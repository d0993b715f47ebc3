"""Argument types: each turns a command-line word into a value, or into one usage line
(argparse prints ``imctl VERB: argument --x: <message>`` and exits 2)."""

from __future__ import annotations

import argparse
import re
from urllib.parse import urlsplit

from control.common.wire import EVENTS_COUNT_MAX, UID_RE, event_count

TOKEN_TTL_MAX_S = 366 * 86400


def server_url(text: str) -> str:
    """A scheduler base URL: http(s)://host[:port][/path]."""
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a scheduler URL like http://127.0.0.1:8080"
        )
    return text.strip().rstrip("/")


def user_id(text: str) -> str:
    if not UID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a uid (1-128 of letters, digits and _.:@+=-)"
        )
    return text


def positive_count(text: str) -> int:
    count = event_count(text)
    if count is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from 1 to {EVENTS_COUNT_MAX}"
        )
    return count


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``500ms``, ``1h`` as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 60s, 2m or 500ms")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def token_ttl(text: str) -> float:
    ttl = parse_duration(text)
    if not 1 <= ttl <= TOKEN_TTL_MAX_S:
        raise argparse.ArgumentTypeError(f"{text!r}: a lifetime from 1s to 366 days")
    return ttl
