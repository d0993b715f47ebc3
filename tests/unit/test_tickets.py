from __future__ import annotations

import base64

import pytest

from control.common.errors import TicketError
from control.common.tickets import TicketKeys


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


KEYS = TicketKeys({"k1": b"secret-one-0123456789", "k2": b"secret-two-0123456789"}, "k2")


def test_roundtrip() -> None:
    token = KEYS.sign("alice", "phone", "n1", exp=2000)
    t = KEYS.verify(token, "n1", now=1000)
    assert (t.uid, t.device, t.node, t.exp, t.kid) == ("alice", "phone", "n1", 2000, "k2")


def test_rotation_accepts_old_key() -> None:
    old = TicketKeys({"k1": b"secret-one-0123456789"}, "k1").sign("a", "d", "n1", 2000)
    assert KEYS.verify(old, "n1", now=1000).kid == "k1"


@pytest.mark.parametrize(
    "mangle,reason",
    [
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "bad signature"),
        (lambda t: "", "missing ticket"),
        (lambda t: "v2" + t[2:], "malformed ticket"),
        (lambda t: t.replace(".", "", 1), "malformed ticket"),
        (lambda t: "v1.!!!.???", "malformed ticket"),
        (lambda t: "x" * 5000, "ticket too long"),
        # JSON nested deeper than the parser recurses (RecursionError, not ValueError).
        (lambda t: "v1." + b64("[" * 1400) + ".AAAA", "malformed ticket"),
    ],
)
def test_rejections(mangle, reason: str) -> None:  # type: ignore[no-untyped-def]
    token = KEYS.sign("alice", "phone", "n1", exp=2000)
    with pytest.raises(TicketError) as err:
        KEYS.verify(mangle(token), "n1", now=1000)
    assert err.value.reason == reason


def test_expired_other_node_unknown_key() -> None:
    token = KEYS.sign("alice", "phone", "n1", exp=2000)
    with pytest.raises(TicketError, match="expired"):
        KEYS.verify(token, "n1", now=2000)
    with pytest.raises(TicketError, match="another node"):
        KEYS.verify(token, "n2", now=1000)
    stranger = TicketKeys({"k9": b"secret-nine-012345678"}, "k9").sign("a", "d", "n1", 2000)
    with pytest.raises(TicketError, match="unknown key"):
        KEYS.verify(stranger, "n1", now=1000)
    forged = TicketKeys({"k2": b"not-the-real-secret!!"}, "k2").sign("a", "d", "n1", 2000)
    with pytest.raises(TicketError, match="bad signature"):
        KEYS.verify(forged, "n1", now=1000)


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _same_bytes_spellings(part: str) -> list[str]:
    """Other spellings of a base64url part that lenient decoders read as the same bytes:
    padding added, and the unused low bits of the last character set differently."""
    out = [part + "=", part + "=" * (-len(part) % 4 or 4)]
    unused = {2: 4, 3: 2}.get(len(part) % 4, 0)  # bits of the last character not decoded
    last = _B64URL.index(part[-1])
    for low in range(1, 1 << unused):
        out.append(part[:-1] + _B64URL[(last & ~((1 << unused) - 1)) | low])
    return out


@pytest.mark.parametrize("which", [1, 2])
def test_only_the_canonical_spelling_verifies(which: int) -> None:
    token = KEYS.sign("alice", "phone", "n1", exp=2000)
    parts = token.split(".")
    variants = _same_bytes_spellings(parts[which])
    assert variants  # the MAC (43 chars) always has unused bits; payloads mostly do
    for variant in variants:
        forged = parts.copy()
        forged[which] = variant
        assert base64.urlsafe_b64decode(variant + "==") == base64.urlsafe_b64decode(
            parts[which] + "=="
        )
        with pytest.raises(TicketError, match="malformed ticket"):
            KEYS.verify(".".join(forged), "n1", now=1000)
