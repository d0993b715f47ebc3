"""The scheduler's public API: ``GET /v1/endpoint``, where a client asks where to connect."""

from __future__ import annotations

from typing import Any

from control.api.spec import INT, NUM, STR, Paths, Schema, answers, obj, ok, query, ref
from control.common.wire import MAX_UID

CLIENT_TOKEN = "clientToken"
CLIENT_SCHEME: Schema = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "Who the client is: a JWT from the app's backend (`sub` = uid), or a "
    "token the configured auth callback accepts (`client_auth`). A scheduler in "
    "`client_auth.mode: trust` (loopback test clusters only) takes `uid=` as given.",
}

_NODE = obj(
    ["node", "endpoint", "ticket"],
    node={**STR, "description": "access node id"},
    endpoint={**STR, "description": "the node's ws:// or wss:// URL"},
    ticket={**STR, "description": "signed for this uid, device and node only"},
)

ASSIGNMENT = obj(
    ["node", "endpoint", "region", "track", "ticket", "expires_in", "fallbacks"],
    node=STR,
    endpoint=STR,
    region=STR,
    track={**STR, "description": "stable, or the gray release that took the user"},
    ticket=STR,
    expires_in={**INT, "description": "seconds the tickets are valid"},
    fallbacks={"type": "array", "items": _NODE, "description": "next best nodes, in order"},
    heartbeat=obj(["interval_s", "timeout_s"], interval_s=NUM, timeout_s=NUM),
    backoff=obj(
        ["base_s", "factor", "jitter", "max_s"], base_s=NUM, factor=NUM, jitter=NUM, max_s=NUM
    ),
)

SCHEMAS: dict[str, Schema] = {"Assignment": ASSIGNMENT, "NodeOffer": _NODE}


def client_query(region_why: str) -> list[dict[str, object]]:
    """The client's parameters, as /v1/endpoint (and the admin API's explain) read them."""
    return [
        query("uid", {**STR, "maxLength": MAX_UID}, "the user (letters, digits, _ . : @ + = -)"),
        query("device", {**STR, "maxLength": 64}, "the device (letters, digits, _ . : -)"),
        query("platform", {**STR, "maxLength": 32}, "ios, android, web, ... (lower case)"),
        query("version", STR, "the app's version, like 1.2.3"),
        query("region", STR, region_why),
    ]


def public_paths() -> Paths:
    return {
        "/v1/endpoint": {
            "get": {
                "operationId": "endpoint",
                "tags": ["clients"],
                "summary": "Where should this client connect?",
                "description": "All of uid, device, platform and version are required "
                "(a missing one is a 400 naming it). The tickets are bound to the "
                "authenticated uid: asking for another uid is a 403.",
                "security": [{CLIENT_TOKEN: []}],
                "parameters": client_query("a known region instead of placing by address"),
                "responses": answers(
                    {200: ok(ref("Assignment"), "the node to connect to, with tickets")},
                    {
                        400: "a parameter is missing or bad (`field` names it)",
                        401: "no credential, or a bad one (`reason`; WWW-Authenticate)",
                        403: "the credential is for another uid, device or platform",
                        429: "too many requests from this address (Retry-After)",
                        503: "no node can take this client now, the auth callback is "
                        "unavailable, or too many connections (Retry-After)",
                    },
                ),
            },
            "options": {
                "operationId": "endpointPreflight",
                "tags": ["clients"],
                "summary": "CORS preflight for web clients",
                "description": "A browser asks before a page on another origin calls "
                "`GET /v1/endpoint` with an `Authorization` header. An origin in "
                "`cors.origins` asking for GET with at most that header gets 204 and the "
                "`Access-Control-Allow-*` headers; anything else a 403 naming why. Without "
                "`Origin` and `Access-Control-Request-Method` it is not a preflight: 204 "
                "with `Allow`.",
                "parameters": [
                    _header("Origin", "the page's origin, scheme://host[:port]"),
                    _header("Access-Control-Request-Method", "the method the page will use"),
                    _header(
                        "Access-Control-Request-Headers",
                        "the headers it will send, comma-separated",
                    ),
                ],
                "responses": answers(
                    {204: {"description": "allowed (or not a preflight: see Allow)"}},
                    {
                        403: "the origin is not in cors.origins, or the method or a "
                        "header is not allowed (`error` says which)"
                    },
                ),
            },
        }
    }


def _header(name: str, why: str) -> dict[str, object]:
    return {"name": name, "in": "header", "required": False, "schema": STR, "description": why}


def demo_paths() -> Paths:
    """The demo web client (``scheduler.demo``; ``imctl up`` always): two static files."""

    def static(summary: str, media: str) -> dict[str, Any]:
        return {
            "get": {
                "operationId": "demo" + media.split("/")[1].capitalize(),
                "tags": ["demo"],
                "summary": summary,
                "responses": {"200": ok(STR, summary, media)},
            }
        }

    return {
        "/demo": {
            "get": {
                "operationId": "demoRedirect",
                "tags": ["demo"],
                "summary": "to /demo/",
                "responses": {"301": {"description": "Location: /demo/"}},
            }
        },
        "/demo/": static("the demo page", "text/html"),
        "/demo/app.js": static("the demo page's script", "text/javascript"),
    }
