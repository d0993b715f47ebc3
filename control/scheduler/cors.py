"""CORS on ``/v1/endpoint`` for the web origins in ``cors.origins``: web pages on those
origins may ask for an endpoint with their ``Authorization`` header; any other origin gets
no CORS headers (the browser keeps the answer from the page) and its preflight a 403.

By hand rather than with aiohttp-cors: that library wraps every route's handler and adds
a signal handler to every response, and the endpoint is the hot path. Here an answer
costs one header lookup when origins are configured and nothing when not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from aiohttp import web

from control.common.ops import json_error

ALLOWED_METHODS = frozenset({"GET"})
# Request headers a page may send beyond the CORS-safelisted ones.
ALLOWED_HEADERS = frozenset({"authorization"})
# Answer headers a page may read beyond the safelisted ones (a refusal's wait, a 401's why).
EXPOSED = "Retry-After, WWW-Authenticate"


class Preflight(NamedTuple):
    """The answer to a preflight: its status, headers, and why when refused."""

    status: int
    headers: Mapping[str, str]
    error: str = ""
    message: str = ""


def preflight(
    origins: frozenset[str],
    origin: str | None,
    method: str | None,
    requested: str | None,
    max_age_s: int,
) -> Preflight:
    """Pure: the answer to ``OPTIONS /v1/endpoint`` from ``origin`` asking to send
    ``method`` with the comma-separated headers ``requested``."""
    vary = {"Vary": "Origin"}
    if origin is None or method is None:
        # Not a preflight: say what the resource takes.
        return Preflight(204, {"Allow": "GET, OPTIONS"})
    if origin not in origins:
        message = (
            f"origin {origin} may not call this API (not in cors.origins)"
            if origins
            else "no web origin may call this API (cors.origins is empty)"
        )
        return Preflight(403, vary, "forbidden_origin", message)
    if method not in ALLOWED_METHODS:
        return Preflight(403, vary, "forbidden_method", f"{method} is not allowed; only GET")
    names = [h.strip().lower() for h in (requested or "").split(",") if h.strip()]
    refused = [h for h in names if h not in ALLOWED_HEADERS]
    if refused:
        return Preflight(
            403,
            vary,
            "forbidden_header",
            f"request header {refused[0]} is not allowed; only Authorization",
        )
    return Preflight(
        204,
        {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "Authorization",
            "Access-Control-Max-Age": str(max_age_s),
            "Vary": "Origin",
        },
    )


class Cors:
    """The endpoint's CORS: ``answer`` for preflights, ``mark`` on every actual answer."""

    def __init__(self, origins: Iterable[str], max_age_s: int) -> None:
        self.origins = frozenset(origins)
        self.max_age_s = max_age_s

    def mark(self, request: web.Request, response: web.Response) -> None:
        """Add the CORS headers when the request's Origin is allowed (also to errors, so
        a page reads why it was refused); Vary always, for caches between."""
        origin = request.headers.get("Origin")
        headers = response.headers
        headers["Vary"] = "Origin"
        if origin is not None and origin in self.origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSED

    async def answer(self, request: web.Request) -> web.Response:
        """``OPTIONS /v1/endpoint``."""
        h = request.headers
        result = preflight(
            self.origins,
            h.get("Origin"),
            h.get("Access-Control-Request-Method"),
            h.get("Access-Control-Request-Headers"),
            self.max_age_s,
        )
        if result.error:
            response = json_error(result.status, result.error, result.message)
        else:
            response = web.Response(status=result.status)
        response.headers.update(result.headers)
        return response
