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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control.common.errors import TicketError

_VERSION = "v1"
_PREFIX = (_VERSION + ".").encode()
MAX_TOKEN_LEN = 2048


@dataclass(frozen=True, slots=True)
class Ticket:
    uid: str
    device: str
    node: str
    exp: int
    kid: str


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def _pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's keyed inner and outer states, computed once per key (RFC 2104)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


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
        object.__setattr__(self, "_pads", {kid: _pads(key) for kid, key in self.keys.items()})

    def _mac(self, kid: str, message: bytes) -> bytes:
        inner, outer = self._pads[kid]  # type: ignore[attr-defined]
        h = inner.copy()
        h.update(message)
        o = outer.copy()
        o.update(h.digest())
        return bytes(o.digest())

    def sign(self, uid: str, device: str, node: str, exp: int) -> str:
        return self.signer(uid, device, exp)(node)

    def signer(self, uid: str, device: str, exp: int) -> Callable[[str], str]:
        """Sign tickets for one client to several nodes, escaping its fields once.

        The payload is the compact JSON of ``{uid, device, node, exp, kid}`` in that order.
        """
        kid = self.active_kid
        head = f'{{"uid":{_json_str(uid)},"device":{_json_str(device)},"node":'.encode()
        tail = f',"exp":{int(exp)},"kid":{_json_str(kid)}}}'.encode()
        inner, outer = self._pads[kid]  # type: ignore[attr-defined]
        b64 = binascii.b2a_base64

        def sign(node: str) -> str:
            # Bytes all the way (the answer needs one decode): this runs 3x per request.
            signed = _PREFIX + b64(head + _json_str(node).encode() + tail, newline=False).translate(
                _URLSAFE
            ).rstrip(b"=")
            h = inner.copy()
            h.update(signed)
            o = outer.copy()
            o.update(h.digest())
            mac = b64(o.digest(), newline=False).translate(_URLSAFE).rstrip(b"=")
            return (signed + b"." + mac).decode("ascii")

        return sign

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
            raw = _unb64(parts[1])
            mac = _unb64(parts[2])
            # Only the canonical encoding is the ticket: base64 decoders forgive stray
            # padding and the low bits of the last character, so "...A" and "...B" could
            # both verify as one ticket (a second spelling defeats any replay cache).
            if _b64(raw) != parts[1] or _b64(mac) != parts[2]:
                raise ValueError("not canonical base64url")
            payload = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):  # as BAD_JSON, and bad base64
            raise TicketError("malformed ticket") from None
        if not isinstance(payload, dict):
            raise TicketError("malformed ticket")
        kid = payload.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TicketError("unknown key id")
        expected = self._mac(str(kid), head.encode("ascii"))
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
