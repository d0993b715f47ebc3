"""Minting a client token: what ``imctl token`` prints, and what an app's backend does
with its own key."""

from __future__ import annotations

import time
from typing import Any

import jwt


def mint(
    uid: str,
    secret: str,
    kid: str,
    ttl_s: float,
    *,
    audience: str = "",
    issuer: str = "",
    now: float | None = None,
    **claims: Any,
) -> str:
    """An HS256 client token for ``uid`` (what ``imctl token`` prints; what an app's
    backend does with its own key)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": uid, "iat": issued, "exp": issued + int(ttl_s), **claims}
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": kid})
