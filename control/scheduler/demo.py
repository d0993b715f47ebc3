"""The demo web client at ``/demo/``: static files shipped in the package (package-data),
plain JavaScript with no build step. It asks ``/v1/endpoint`` (of its own origin, or of the
scheduler named in ``?server=``, through CORS), connects, shows frames, sends messages,
heartbeats, and follows ``reconnect`` frames and fallbacks as the reference client does."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aiohttp import web

FILES = ("index.html", "app.js")


def demo_dir() -> Path:
    """Where the page's files are installed."""
    return Path(str(resources.files("control.scheduler") / "static" / "demo"))


def mount_demo(app: web.Application) -> None:
    """``GET /demo`` (to ``/demo/``), ``/demo/`` (the page) and its script; nothing else
    under the directory is served (no listing, no path from the request)."""
    root = demo_dir()
    types = {"index.html": "text/html", "app.js": "text/javascript"}

    async def to_page(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/demo/")

    def serve(name: str) -> web.StreamResponse:
        response = web.FileResponse(root / name)
        response.content_type = types[name]
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def page(request: web.Request) -> web.StreamResponse:
        return serve("index.html")

    async def script(request: web.Request) -> web.StreamResponse:
        return serve("app.js")

    app.router.add_get("/demo", to_page, allow_head=False)
    app.router.add_get("/demo/", page)
    app.router.add_get("/demo/app.js", script)
