"""Who a verified credential says the client is (``Identity``), why one is refused
(``AuthFailure``), the bearer header, the cache of verified credentials, and the claims
that limit a credential to some devices or platforms."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

Clock = Callable[[], float]
MAX_CREDENTIAL_LEN = 4096  # longer is refused before any parsing (and never cached)


class Identity(NamedTuple):
    """Who a verified credential says the client is, and until when."""

    uid: str
    exp: float
    kid: str = ""  # the key that signed it ("" for the callback): rotation drops its entries
    devices: frozenset[str] | None = None  # only these devices, when the credential says so
    platforms: frozenset[str] | None = None


class AuthFailure(Exception):
    """Why a client is refused: HTTP status, a stable reason code and a sentence."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def unauthorized(reason: str, message: str) -> AuthFailure:
    return AuthFailure(401, reason, message)


MISSING = unauthorized("missing", "an Authorization: Bearer <token> header is required")


def bearer(header: str | None) -> str:
    """The credential of an ``Authorization: Bearer <credential>`` header (the scheme in
    any case, RFC 7235)."""
    if not header:
        raise MISSING
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        raise unauthorized("malformed", "the Authorization header must use the Bearer scheme")
    credential = credential.strip()
    if not credential:
        raise MISSING
    if len(credential) > MAX_CREDENTIAL_LEN:
        raise unauthorized("malformed", f"credential longer than {MAX_CREDENTIAL_LEN} characters")
    if not credential.isascii():  # RFC 6750 token68: header bytes that are not even UTF-8
        raise unauthorized("malformed", "credential holds characters a bearer token cannot")
    return credential


class IdentityCache:
    """Verified credentials until their expiry: a bounded LRU keyed by the raw credential.

    ``get`` checks the expiry against the clock on every hit, so an entry never outlives
    its credential; the least recently used entry goes when ``size`` is reached."""

    def __init__(self, size: int, clock: Clock = time.time) -> None:
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[str, Identity] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, credential: str) -> Identity | None:
        entries = self._entries
        found = entries.get(credential)
        if found is None:
            return None
        if found.exp <= self.clock():
            del entries[credential]
            return None
        entries.move_to_end(credential)
        return found

    def put(self, credential: str, identity: Identity) -> None:
        if self.size <= 0 or identity.exp <= self.clock():
            return
        entries = self._entries
        entries[credential] = identity
        entries.move_to_end(credential)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def drop_kids(self, kids: Collection[str]) -> int:
        """Forget credentials signed by ``kids`` (keys rotated out); how many went."""
        gone = [c for c, ident in self._entries.items() if ident.kid in kids]
        for credential in gone:
            del self._entries[credential]
        return len(gone)


def names_claim(value: Any, claim: str) -> frozenset[str] | None:
    """A ``devices`` or ``platforms`` claim: None (no limit) or a set of names."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise unauthorized("malformed", f"claim {claim!r} must be a list of strings")
    return frozenset(value)


def check_claims(identity: Identity, device: str, platform: str) -> AuthFailure | None:
    """A 403 when the credential limits the devices or platforms and this is not one."""
    if identity.devices is not None and device not in identity.devices:
        return AuthFailure(403, "device_not_allowed", "the credential does not allow this device")
    if identity.platforms is not None and platform not in identity.platforms:
        return AuthFailure(
            403, "platform_not_allowed", "the credential does not allow this platform"
        )
    return None
