"""Bearer tokens with roles for admin APIs: viewers read, operators change."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "operator"]
_RANK = {"viewer": 1, "operator": 2}


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

    def role_of(self, authorization: str | None) -> Role | None:
        if self.open:
            return "operator"
        if not authorization or not authorization.startswith("Bearer "):
            return None
        # surrogateescape: header bytes that are not UTF-8 compare as the bytes they were.
        presented = authorization[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
        found: Role | None = None
        for grant in self.grants:  # compare against all: timing reveals nothing
            if hmac.compare_digest(grant.token.encode(), presented):
                found = grant.role
        return found

    @staticmethod
    def allows(role: Role | None, needed: Role) -> bool:
        return role is not None and _RANK[role] >= _RANK[needed]

    @classmethod
    def of(cls, grants: Iterable[Grant]) -> TokenTable:
        return cls(tuple(grants))
