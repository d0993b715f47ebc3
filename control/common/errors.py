"""One root exception; retryable vs fatal branches (patroni's layout)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

# json.loads raises RecursionError, not ValueError, for input nested too deep (a frame of
# 30,000 "[" fits in 64 KB): every parse of outside input catches both.
BAD_JSON: tuple[type[Exception], ...] = (ValueError, RecursionError)


def _problem(text: str, exc: Exception) -> str:
    """What is wrong with ``text`` as JSON, in a few words a client developer can act on
    (Python's own wording for a too-long number names a Python setting)."""
    if text.startswith("\ufeff"):
        return "starts with a byte order mark"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at character {exc.pos}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    message = str(exc)
    if "integer string conversion" in message:
        return f"a number of more than {sys.get_int_max_str_digits()} digits"
    return message[:80]


class NotJson(ValueError):
    """Outside input that is not JSON; the message says what is wrong and where."""


def parse_json(data: bytes | str, loads: Callable[[str], Any] = json.loads) -> Any:
    """Outside input (a frame, a request body) as JSON, or NotJson saying why not."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise NotJson(f"not UTF-8 at byte {exc.start}") from None
    try:
        return loads(text)
    except BAD_JSON as exc:
        raise NotJson(_problem(text, exc)) from None


class ImctlError(Exception):
    """Root of every error imctl raises on purpose."""


class FatalError(ImctlError):
    """Retrying will not help: bad config, bad input, broken invariant."""


class RetryableError(ImctlError):
    """The backend or a peer is unavailable for now; retry with backoff."""


class ConfigError(FatalError):
    """Every problem found in one configuration, reported together."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class BadRequest(FatalError):
    """Client input that names its bad field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class TicketError(FatalError):
    """A ticket that must not open a connection (forged, expired, other node...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BackendUnavailable(RetryableError):
    """The key-value backend (etcd) cannot be reached."""


class LeaseNotFound(RetryableError):
    """The lease expired or was revoked; the holder must register again."""


class RevisionCompacted(RetryableError):
    """A watch asked for history that was compacted away; re-list and watch again."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted at {compact_revision}")
