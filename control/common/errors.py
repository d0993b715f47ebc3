"""One root exception; retryable vs fatal branches (patroni's layout)."""

from __future__ import annotations

# json.loads raises RecursionError, not ValueError, for input nested too deep (a frame of
# 30,000 "[" fits in 64 KB): every parse of outside input catches both.
BAD_JSON: tuple[type[Exception], ...] = (ValueError, RecursionError)


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
