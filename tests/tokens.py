"""Client credentials for tests: the JWT section of a test config and tokens it accepts."""

from __future__ import annotations

from typing import Any

from control.common.client_auth import mint

SECRET = "test-client-key-0123456789abcdef-not-secret"
KID = "test"
AUDIENCE = "imctl"
CLIENT_AUTH: dict[str, Any] = {"mode": "jwt", "keys": {KID: SECRET}, "audience": AUDIENCE}
TRUST: dict[str, Any] = {"mode": "trust"}  # uid= as given: for tests about something else


def token(uid: str, ttl: float = 86_400, **claims: Any) -> str:
    """A token CLIENT_AUTH accepts for ``uid``; a day, so that one minted when a module is
    collected still holds when its tests run late in a slow suite."""
    return mint(uid, SECRET, KID, ttl, audience=AUDIENCE, **claims)


def as_user(uid: str, **claims: Any) -> dict[str, str]:
    """Request headers that prove ``uid``."""
    return {"Authorization": f"Bearer {token(uid, **claims)}"}
