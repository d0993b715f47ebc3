"""Serving the documents: ``GET /openapi.json`` on every app that has one, and the frame
schema on access nodes. Each body is encoded once, when the first request asks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from control.api.frames import frame_schema
from control.api.spec import FRAMES_PATH

Builder = Callable[[], dict[str, Any]]

# Set by the admin API's mount: the scheduler's document then describes it too.
WITH_ADMIN = web.AppKey("api_with_admin", bool)


def _json_route(app: web.Application, route: str, build: Builder) -> None:
    encoded: list[bytes] = []

    async def serve(request: web.Request) -> web.Response:
        if not encoded:
            encoded.append(json.dumps(build(), separators=(",", ":")).encode())
        return web.Response(body=encoded[0], content_type="application/json")

    app.router.add_get(route, serve)


def add_openapi(app: web.Application, build: Builder) -> None:
    """``GET /openapi.json``: the document ``build`` makes (called once, at the first ask)."""
    _json_route(app, "/openapi.json", build)


def add_frame_schema(app: web.Application) -> None:
    """``GET /schema/frames.json``: the WebSocket frames' JSON Schema."""
    _json_route(app, FRAMES_PATH, frame_schema)
