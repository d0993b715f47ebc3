"""The client frame protocol (**contract**): JSON text frames with a ``t`` field. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from control.common.errors import NotJson, parse_json

# Close codes the server uses (4000-4999 are the application's own).
CLOSE_IDLE = 4000  # no frame within the heartbeat timeout
CLOSE_KICKED = 4001  # the same device logged in elsewhere
CLOSE_RECONNECT = 4002  # told to reconnect (drain, rebalance, rollback) and stayed
CLOSE_POLICY = 1008  # repeated malformed or oversized frames
CLOSE_GOING_AWAY = 1001  # node shutting down

CONTROL_TYPES = frozenset({"ping", "status"})


@dataclass(frozen=True, slots=True)
class FrameError:
    code: str
    message: str

    def frame(self) -> dict[str, Any]:
        return {"t": "error", "code": self.code, "message": self.message}


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# NaN and Infinity are Python's extensions: a frame carrying them could not be passed on to
# clients whose parsers are strict (JSON.parse in every browser).
_decode = json.JSONDecoder(parse_constant=_not_json).decode


# Frames out: UTF-8 rather than \u escapes (a CJK payload would double), and NaN refused
# (it is not JSON, and browsers' parsers reject it). Node and push API share it.
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def loads_strict(text: str) -> Any:
    """JSON that can be passed on to any client: no NaN or Infinity, and no ``\\u`` escape
    naming half a surrogate pair (it decodes to a str that cannot be encoded as UTF-8, so
    sending it on would fail). Raises ValueError (or RecursionError, see BAD_JSON)."""
    value = _decode(text)
    if "\\u" in text:  # only escapes can make a lone surrogate; most frames have none
        try:
            dumps(value).encode()  # as it would be sent on
        except UnicodeEncodeError:
            raise ValueError("a \\u escape names half a surrogate pair") from None
    return value


def parse_frame(data: str, max_bytes: int) -> dict[str, Any] | FrameError:
    """A client frame as a dict with a string ``t``, or why it is not one."""
    if len(data) > max_bytes or len(data.encode()) > max_bytes:
        return FrameError("too_large", f"frames are limited to {max_bytes} bytes")
    try:
        frame = parse_json(data, loads_strict)
    except NotJson as exc:
        return FrameError("malformed", f"not JSON: {exc}")
    if not isinstance(frame, dict):
        return FrameError("malformed", "frames are JSON objects")
    t = frame.get("t")
    if not isinstance(t, str) or not t:
        return FrameError("malformed", 'frames need a string field "t"')
    return frame


def welcome(conn: str, node: str, interval_s: float, timeout_s: float) -> dict[str, Any]:
    return {
        "t": "welcome",
        "conn": conn,
        "node": node,
        "heartbeat": {"interval_s": interval_s, "timeout_s": timeout_s},
    }


def reconnect(after_ms: int, reason: str) -> dict[str, Any]:
    return {"t": "reconnect", "after_ms": after_ms, "reason": reason}


def kicked(reason: str) -> dict[str, Any]:
    return {"t": "kicked", "reason": reason}


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed server-to-client text frame (RFC 6455 section 5.2), built
    once per push and written to every recipient's socket as is."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload
