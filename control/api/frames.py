"""The WebSocket frame protocol as a JSON Schema (2020-12): one schema per frame type, the
client's frames and the server's, each direction a ``oneOf`` told apart by the ``t`` field
(with OpenAPI's ``discriminator`` beside it as an annotation). Served by every access node
at ``/schema/frames.json``; the tests validate every frame they send and receive against it.

It describes the node (ping, status and its control frames) and the reference message core
(control/access/echo.py: echo, msg, ack); frames of other types from the server are a core's
or a push's, free-form. What a schema cannot see stays the node's own check
(control/access/protocol.py): a frame's size (``access.max_frame_bytes``), and text that is
not strict JSON (NaN, half a surrogate pair)."""

from __future__ import annotations

from typing import Any

from control.api.spec import FRAMES_PATH, Schema
from control.presence.model import STATUSES

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_BODY = 16_384  # the reference core's msg body (control/access/echo.py)

# The close codes the node uses (control/access/protocol.py; a test holds the two equal).
CLOSE_CODES = {
    1001: "going away: the node is shutting down",
    1008: "policy: too many bad frames",
    1009: "a frame past the transport limit (4 x access.max_frame_bytes)",
    1011: "presence unavailable at login",
    4000: "idle: no frame within the heartbeat timeout",
    4001: "kicked: the same device logged in elsewhere",
    4002: "told to reconnect and still here after the grace",
}
ERROR_CODES = {
    "too_large": "a frame over access.max_frame_bytes (or a msg body over its limit)",
    "malformed": "not a JSON object with a string t",
    "unknown_type": "no one handles this t",
    "binary": "a binary frame: frames are JSON text",
    "rate_limited": "over access.frame_rate_per_s: the frame was not read",
    "bad_status": "a status frame with an unknown status",
    "bad_field": "a field the message core needs is missing or bad",
    "internal": "the message core failed on this frame (the connection stays)",
    "unavailable": "presence is unavailable; try again",
}
RECONNECT_REASONS = ("drain", "rollback", "promote", "rebalance")


def _frame(t: str, why: str, required: tuple[str, ...] = (), **props: Schema) -> Schema:
    return {
        "description": why,
        "type": "object",
        "properties": {"t": {"const": t}, **props},
        "required": ["t", *required],
    }


def _closed(schema: Schema) -> Schema:
    """A frame the node itself sends: no fields beyond the described ones."""
    return {**schema, "additionalProperties": False}


_NUM = {"type": "number", "minimum": 0}
_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_ID = {"description": "the client's id for the message, echoed in its ack"}

CLIENT: dict[str, Schema] = {
    "ping": _frame("ping", "a heartbeat, every heartbeat.interval_s (a WebSocket PING counts too)"),
    "status": _frame(
        "status", "set this device's presence status", ("status",), status={"enum": list(STATUSES)}
    ),
    "echo": _frame("echo", "reference core: sent straight back", body={}),
    "msg": _frame(
        "msg",
        "reference core: a direct message to every device of another user",
        ("to",),
        to={"type": "string", "minLength": 1},
        body={"anyOf": [{"type": "string", "maxLength": MAX_BODY}, {"not": {"type": "string"}}]},
        id=_ID,
    ),
}

SERVER: dict[str, Schema] = {
    "welcome": _closed(
        _frame(
            "welcome",
            "the first frame of every connection",
            ("conn", "node", "heartbeat"),
            conn=_STR,
            node=_STR,
            heartbeat={
                "type": "object",
                "properties": {"interval_s": _NUM, "timeout_s": _NUM},
                "required": ["interval_s", "timeout_s"],
                "additionalProperties": False,
            },
        )
    ),
    "pong": _closed(_frame("pong", "the answer to a ping frame")),
    "status": _closed(
        _frame(
            "status",
            "the answer to a status frame (ok false: the entry was gone)",
            ("status", "ok"),
            status={"enum": list(STATUSES)},
            ok={"type": "boolean"},
        )
    ),
    "error": _closed(
        _frame(
            "error",
            "a frame refused (it counts toward access.abuse_limit, except internal and "
            "unavailable)",
            ("code", "message"),
            code={"enum": list(ERROR_CODES), "x-imctl-codes": ERROR_CODES},
            message=_STR,
        )
    ),
    "reconnect": _closed(
        _frame(
            "reconnect",
            "ask the scheduler again after after_ms (closed 4002 if still here after the grace)",
            ("after_ms", "reason"),
            after_ms={"type": "integer", "minimum": 0},
            reason={"enum": list(RECONNECT_REASONS)},
        )
    ),
    "kicked": _closed(
        _frame(
            "kicked",
            "the same device logged in elsewhere (then close 4001)",
            ("reason",),
            reason=_STR,
        )
    ),
    "echo": _closed(_frame("echo", "reference core: the echo frame back", body={})),
    "msg": _closed(
        _frame(
            "msg",
            "reference core: a direct message from another user",
            ("from", "body"),
            **{"from": _STR},
            body={},
        )
    ),
    "ack": _closed(
        _frame(
            "ack",
            "reference core: what became of a msg (the push API's result)",
            ("delivered", "offline", "failed", "failed_nodes", "unknown"),
            id=_ID,
            delivered={"type": "integer", "minimum": 0},
            offline=_STRS,
            failed=_STRS,
            failed_nodes=_STRS,
            unknown=_STRS,
        )
    ),
}

# Anything else the server sends is a message core's frame or a push's payload: a JSON
# object whose t, when it has one, names none of the frames above.
PUSHED: Schema = {
    "description": "a message core's frame or a pushed payload: any JSON object",
    "type": "object",
    "not": {"required": ["t"], "properties": {"t": {"enum": list(SERVER)}}},
}


def _one_of(prefix: str, frames: dict[str, Schema], *extra: Schema) -> Schema:
    refs = {t: f"#/$defs/{prefix}.{t}" for t in frames}
    return {
        "oneOf": [{"$ref": r} for r in refs.values()] + list(extra),
        "discriminator": {"propertyName": "t", "mapping": refs},
    }


def frame_schema() -> dict[str, Any]:
    """The whole schema: ``#/$defs/client`` and ``#/$defs/server`` are the two directions."""
    defs: dict[str, Schema] = {f"client.{t}": s for t, s in CLIENT.items()}
    defs |= {f"server.{t}": s for t, s in SERVER.items()}
    defs["server.pushed"] = PUSHED
    defs["client"] = _one_of("client", CLIENT)
    defs["server"] = _one_of("server", SERVER, {"$ref": "#/$defs/server.pushed"})
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": FRAMES_PATH,
        "title": "imctl access-node WebSocket frames",
        "description": "JSON text frames with a string field t. The client sends "
        "#/$defs/client frames, the server #/$defs/server frames. Close codes: "
        + "; ".join(f"{code} {why}" for code, why in CLOSE_CODES.items()),
        "x-imctl-close-codes": {str(k): v for k, v in CLOSE_CODES.items()},
        "anyOf": [{"$ref": "#/$defs/client"}, {"$ref": "#/$defs/server"}],
        "$defs": defs,
    }


def direction_schema(direction: str) -> dict[str, Any]:
    """The schema of one direction's frames (``client`` or ``server``), standalone."""
    whole = frame_schema()
    return {"$schema": SCHEMA_DIALECT, "$ref": f"#/$defs/{direction}", "$defs": whole["$defs"]}
