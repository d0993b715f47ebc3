"""Frames held to their JSON Schema (control/api/frames.py) in every test that talks to an
access node: the ``http`` fixture's sessions open :class:`CheckedWebSocket`s, which

- fail the test on any text frame from the server that the schema refuses, and
- check each text frame the test sends: tests send refused frames on purpose (a bad
  status, an unknown type), so a refusal is counted, not failed; but an error frame from
  the node that says a frame was malformed, of an unknown type, or had a bad field or
  status — refusals a schema can express — must follow at least as many frames the schema
  refused on that connection. (Size limits, binary frames and rate limits are not the
  schema's to see.)
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jsonschema

from control.access.protocol import loads_strict
from control.api import direction_schema
from control.api.frames import CLIENT, SERVER

# The node's refusals a schema can express too.
SCHEMA_REFUSALS = frozenset({"malformed", "unknown_type", "bad_status", "bad_field"})

_WHOLE = {d: jsonschema.Draft202012Validator(direction_schema(d)) for d in ("client", "server")}
_BY_TYPE = {
    d: {t: jsonschema.Draft202012Validator(s) for t, s in frames.items()}
    for d, frames in (("client", CLIENT), ("server", SERVER))
}


def frame_problems(direction: str, frame: Any) -> list[str]:
    """What the schema says is wrong with ``frame`` going that way; [] when nothing. The
    frame's own type's schema speaks when ``t`` names one (clearer than oneOf's "not valid
    under any of the given schemas")."""
    whole = [e.message for e in _WHOLE[direction].iter_errors(frame)]
    if not whole:
        return []
    own = _BY_TYPE[direction].get(frame.get("t")) if isinstance(frame, dict) else None
    if own is not None:
        found = [
            f"{'/'.join(map(str, e.path)) or 'frame'}: {e.message}" for e in own.iter_errors(frame)
        ]
        return found or whole
    return whole


def text_problems(direction: str, text: str) -> list[str]:
    """``frame_problems`` of a text frame, parsed as strictly as the node parses."""
    try:
        frame = loads_strict(text)
    except (ValueError, RecursionError) as exc:
        return [f"not JSON: {str(exc)[:80]}"]
    return frame_problems(direction, frame)


class CheckedWebSocket(aiohttp.ClientWebSocketResponse):
    """A client WebSocket whose text frames are held to the frame schema (module doc)."""

    async def send_str(self, data: str, compress: int | None = None) -> None:
        if text_problems("client", data):
            self.schema_refused = getattr(self, "schema_refused", 0) + 1
        await super().send_str(data, compress)

    async def receive(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (aiohttp's)
        msg = await super().receive(timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            problems = text_problems("server", msg.data)
            assert not problems, (
                f"a frame from the node breaks the schema: {msg.data[:200]}: {problems}"
            )
            frame = json.loads(msg.data)
            if frame.get("t") == "error" and frame["code"] in SCHEMA_REFUSALS:
                self.node_refused = getattr(self, "node_refused", 0) + 1
                assert self.node_refused <= getattr(self, "schema_refused", 0), (
                    f"the node refused a frame ({frame}) that the frame schema accepts"
                )
        return msg
