"""Signed connection tickets: the scheduler signs, the access node verifies.

Token: ``v1.<payload>.<mac>``, both parts base64url without padding; the payload is the JSON
of ``{uid, device, node, exp, kid}`` and the MAC is HMAC-SHA256 over ``v1.<payload>`` with the
key named by ``kid``. Several keys are accepted at once so keys can be rotated without
dropping anyone: sign with the new key only after every access node knows it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

from control.common.errors import TicketError

_VERSION = "v1"
MAX_TOKEN_LEN = 2048


@dataclass(frozen=True, slots=True)
class Ticket:
    uid: str
    device: str
    node: str
    exp: int
    kid: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TicketKeys:
    """The keys a process knows, and the one it signs with."""

    keys: Mapping[str, bytes]
    active_kid: str

    def __post_init__(self) -> None:
        if self.active_kid not in self.keys:
            raise ValueError(f"active key id {self.active_kid!r} is not among the keys")

    def sign(self, uid: str, device: str, node: str, exp: int) -> str:
        payload = json.dumps(
            {"uid": uid, "device": device, "node": node, "exp": exp, "kid": self.active_kid},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        head = f"{_VERSION}.{_b64(payload)}"
        mac = hmac.new(self.keys[self.active_kid], head.encode("ascii"), hashlib.sha256).digest()
        return f"{head}.{_b64(mac)}"

    def verify(self, token: str, node: str, now: float) -> Ticket:
        """The ticket inside ``token`` if it is genuine, unexpired and for ``node``."""
        if not token:
            raise TicketError("missing ticket")
        if len(token) > MAX_TOKEN_LEN:
            raise TicketError("ticket too long")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise TicketError("malformed ticket")
        head = f"{parts[0]}.{parts[1]}"
        try:
            payload = json.loads(_unb64(parts[1]))
            mac = _unb64(parts[2])
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise TicketError("malformed ticket") from None
        if not isinstance(payload, dict):
            raise TicketError("malformed ticket")
        kid = payload.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TicketError("unknown key id")
        expected = hmac.new(key, head.encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, mac):
            raise TicketError("bad signature")
        try:
            ticket = Ticket(
                uid=str(payload["uid"]),
                device=str(payload["device"]),
                node=str(payload["node"]),
                exp=int(payload["exp"]),
                kid=str(kid),
            )
        except (KeyError, TypeError, ValueError):
            raise TicketError("malformed ticket") from None
        if ticket.exp <= now:
            raise TicketError("expired ticket")
        if not hmac.compare_digest(ticket.node.encode(), node.encode()):
            raise TicketError("ticket is for another node")
        return ticket
