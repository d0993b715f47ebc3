"""The controller's small HTTP edge: health, readiness and metrics."""

from __future__ import annotations

from aiohttp import web

from control.common.auth import TokenTable
from control.common.ops import add_json_fallbacks, add_ops_routes, lifecycle
from control.presence.controller import Controller

CONTROLLER = web.AppKey("controller", Controller)


def create_app(
    controller: Controller, metrics_readers: TokenTable | None = None
) -> web.Application:
    """The controller's app on backends its caller opens and closes (control/launch.py)."""
    app = web.Application()
    app[CONTROLLER] = controller
    app.cleanup_ctx.append(lifecycle(controller))
    add_ops_routes(
        app,
        controller.supervisor,
        controller.metrics.registry,
        lambda: (controller.synced, {"leader": controller.election.leader}),
        metrics_readers,
    )
    add_json_fallbacks(app)
    return app
