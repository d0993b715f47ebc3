"""The admin API's routes, mounted into the scheduler's app."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from control.admin.auth import ADMIN
from control.admin.config import AdminConfig
from control.admin.explain import explain_endpoint
from control.admin.gray import add_gray_routes
from control.admin.nodes import drain_node, nodes_handler, rebalance_nodes, undrain_node
from control.admin.presence import (
    presence_count,
    presence_events,
    presence_lookup,
    presence_status_handler,
    presence_who,
)
from control.admin.ring import add_ring_routes
from control.api import WITH_ADMIN


def mount(config: AdminConfig) -> Callable[[web.Application], None]:
    """What adds the admin API to a scheduler app (its ``mounts``)."""

    def add_routes(app: web.Application) -> None:
        app[ADMIN] = config
        app[WITH_ADMIN] = True  # the scheduler's /openapi.json describes these routes too
        app.router.add_get("/v1/nodes", nodes_handler)
        app.router.add_get("/v1/explain", explain_endpoint)
        app.router.add_post("/v1/nodes/{node}/drain", drain_node)
        app.router.add_delete("/v1/nodes/{node}/drain", undrain_node)
        app.router.add_post("/v1/nodes/rebalance", rebalance_nodes)
        app.router.add_get("/v1/presence/count", presence_count)
        app.router.add_get("/v1/presence/status", presence_status_handler)
        app.router.add_get("/v1/presence/events", presence_events)
        app.router.add_post("/v1/presence/lookup", presence_lookup)
        add_ring_routes(app)
        add_gray_routes(app)
        app.router.add_get("/v1/presence/{uid}", presence_who)

    return add_routes
