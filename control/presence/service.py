"""The controller's small HTTP edge: health, readiness and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control.presence.controller import Controller

CONTROLLER = web.AppKey("controller", Controller)


def create_app(controller: Controller, own_backends: bool = False) -> web.Application:
    app = web.Application()
    app[CONTROLLER] = controller

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if own_backends:
            await controller.kv.connect()
        await controller.start()
        yield
        await controller.stop()
        if own_backends:
            await controller.presence.close()
            await controller.kv.close()

    async def healthz(request: web.Request) -> web.Response:
        alive = controller.supervisor.alive()
        ok = all(alive.values())
        return web.json_response({"ok": ok, "tasks": alive}, status=200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response(
            {"ready": controller.synced, "leader": controller.election.leader},
            status=200 if controller.synced else 503,
        )

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(controller.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
