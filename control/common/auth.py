"""Bearer tokens with roles for admin APIs (viewers read, operators change), and the one
constant-time secret check every HTTP surface uses."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "operator"]
_RANK = {"viewer": 1, "operator": 2}


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <token>`` header (the scheme is
    case-insensitive, RFC 7235); None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of a presented secret with a configured one."""
    # surrogateescape: header bytes that are not UTF-8 compare as the bytes they were.
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


@dataclass(frozen=True)
class Grant:
    name: str
    token: str
    role: Role


@dataclass(frozen=True)
class TokenTable:
    grants: tuple[Grant, ...]

    @property
    def open(self) -> bool:
        """No tokens configured: every caller is an operator (loopback-only clusters)."""
        return not self.grants

    def grant_of(self, token: str) -> Grant | None:
        """The grant whose token this is; every grant is compared, so timing reveals
        neither which one matched nor how much of one did."""
        found: Grant | None = None
        for grant in self.grants:
            if same_secret(token, grant.token):
                found = grant
        return found

    def role_of(self, authorization: str | None) -> Role | None:
        if self.open:
            return "operator"
        token = bearer(authorization)
        grant = self.grant_of(token) if token is not None else None
        return grant.role if grant is not None else None

    def refusal(self, authorization: str | None, needed: Role) -> tuple[int, str, str] | None:
        """Why a request with this ``Authorization`` header may not do what needs
        ``needed``, as (status, code, message); None when it may. 401 says whether the
        credential was missing or wrong, never how close it came; 403 names the role."""
        granted = self.role_of(authorization)
        if granted is None:
            missing = bearer(authorization) is None
            return 401, "unauthorized", "a bearer token is required" if missing else "invalid token"
        if not self.allows(granted, needed):
            return 403, "forbidden", f"this needs the {needed} role"
        return None

    @staticmethod
    def allows(role: Role | None, needed: Role) -> bool:
        return role is not None and _RANK[role] >= _RANK[needed]

    @classmethod
    def of(cls, grants: Iterable[Grant]) -> TokenTable:
        return cls(tuple(grants))
