"""The operator endpoints every process serves: /healthz, /readyz, /metrics.

Liveness means every supervised task is still running; readiness is the process's own
answer to "can I serve?"; metrics come from the process's own registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from control.common.tasks import Supervisor

Readiness = Callable[[], tuple[bool, Mapping[str, Any]]]


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def lifecycle(
    component: Component,
    opens: Sequence[Callable[[], Awaitable[None]]] = (),
    closes: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An app's cleanup context for one component: open its backends, start it; on the way
    out stop it first (it may still write), then close the backends in the given order."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        for open_ in opens:
            await open_()
        await component.start()
        yield
        await component.stop()
        for close in closes:
            await close()

    return run


def json_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The error answer of every process: ``{"error", "message", ...}``; ``retry_after``
    also goes out as the Retry-After header."""
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else None
    return web.json_response(
        {"error": code, "message": message, **extra}, status=status, headers=headers
    )


def add_ops_routes(
    app: web.Application,
    supervisor: Supervisor,
    registry: CollectorRegistry,
    readiness: Readiness,
) -> None:
    async def healthz(request: web.Request) -> web.Response:
        alive = supervisor.alive()
        ok = all(alive.values())
        return web.json_response({"ok": ok, "tasks": alive}, status=200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready, details = readiness()
        return web.json_response({"ready": ready, **details}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
