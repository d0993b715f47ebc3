"""The access node's HTTP routes: the WebSocket upgrade at /ws (its frames are described
by the JSON Schema at /schema/frames.json), the internal push and kick API, and the
frame schema itself."""

from __future__ import annotations

from control.api.spec import (
    ANY_OBJ,
    BOOL,
    FRAMES_PATH,
    INT,
    STR,
    STRS,
    Paths,
    Schema,
    answers,
    body,
    obj,
    ok,
    query,
)

TICKET = "ticket"
TICKET_SCHEME: Schema = {
    "type": "apiKey",
    "in": "query",
    "name": "ticket",
    "description": "The ticket /v1/endpoint signed for this node (uid, device, expiry).",
}
INTERNAL_TOKEN = "internalToken"
INTERNAL_SCHEME: Schema = {
    "type": "http",
    "scheme": "bearer",
    "description": "`access.internal_token`: the push API of other processes, not clients.",
}

PUSH_RESULT = obj(["delivered", "missing"], delivered=INT, missing=STRS)


def access_paths() -> Paths:
    return {
        "/ws": {
            "get": {
                "operationId": "websocket",
                "tags": ["clients"],
                "summary": "Open the client's WebSocket (JSON text frames)",
                "description": "An upgrade request (RFC 6455). Once open, the frames are "
                f"described by the JSON Schema at `{FRAMES_PATH}`: the server first sends "
                "`welcome`, the client pings every heartbeat interval. Every refusal comes "
                "before the upgrade and closes the connection.",
                "security": [{TICKET: []}],
                "externalDocs": {"description": "the frame protocol", "url": FRAMES_PATH},
                "parameters": [
                    query("platform", STR, "ios, android, web, ... (what presence records)"),
                    query("version", STR, "the app version given to the scheduler"),
                ],
                "responses": {
                    "101": {"description": "switched to the WebSocket protocol"},
                    **answers(
                        {},
                        {
                            400: "not a WebSocket upgrade (`not_websocket`)",
                            401: "a missing, forged, expired or other node's ticket (`bad_ticket`)",
                            429: "too many handshakes from this address or on this node",
                            503: "the node is draining or full (ask the scheduler again), "
                            "or too many connections",
                        },
                    ),
                },
            }
        },
        "/internal/push": {
            "post": {
                "operationId": "push",
                "tags": ["internal"],
                "summary": "Send a frame to every connection of these users on this node",
                "security": [{INTERNAL_TOKEN: []}],
                "requestBody": body(obj(["uids", "payload"], uids=STRS, payload=ANY_OBJ)),
                "responses": answers(
                    {200: ok(PUSH_RESULT, "delivered frames; uids not on this node")},
                    {400: "the body is not {uids: [str], payload: {...}}", 401: None},
                ),
            }
        },
        "/internal/kick": {
            "post": {
                "operationId": "kick",
                "tags": ["internal"],
                "summary": "Close one connection whose (user, device) logged in elsewhere",
                "security": [{INTERNAL_TOKEN: []}],
                "requestBody": body(obj(["uid", "conn"], uid=STR, conn=STR, reason=STR)),
                "responses": answers(
                    {200: ok(obj(["kicked"], kicked=BOOL))},
                    {400: "the body is not a JSON object", 401: None},
                ),
            }
        },
        FRAMES_PATH: {
            "get": {
                "operationId": "frameSchema",
                "tags": ["clients"],
                "summary": "The JSON Schema (2020-12) of the WebSocket frames",
                "responses": answers({200: ok(ANY_OBJ, "the schema")}, ()),
            }
        },
    }
