"""The controller's small HTTP edge: health, readiness and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from control.common.ops import add_ops_routes
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

    app.cleanup_ctx.append(lifecycle)
    add_ops_routes(
        app,
        controller.supervisor,
        controller.metrics.registry,
        lambda: (controller.synced, {"leader": controller.election.leader}),
    )
    return app
