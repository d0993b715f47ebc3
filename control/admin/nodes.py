"""``/v1/nodes``: the serving snapshot's nodes with their load, and drain requests."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from control.admin.auth import ADMIN, require, who
from control.common.errors import NotJson, parse_json
from control.common.ops import json_error
from control.common.rebalance import RebalanceRequest, check, rebalance_requests
from control.common.records import to_data
from control.common.registry import (
    DRAIN_DEFAULT_S,
    DRAIN_MAX_S,
    drain_requests,
    drain_window,
    request_drain,
)
from control.scheduler.pipeline import load
from control.scheduler.state import ENGINE, KV

log = logging.getLogger(__name__)


@require("viewer")
async def nodes_handler(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    snap = engine.snapshot
    rows = []
    for node in sorted(snap.nodes.values(), key=lambda n: (n.region, n.zone, n.id)):
        row: dict[str, Any] = {f: getattr(node, f) for f in node.__dataclass_fields__}
        pending = engine.pending.get(node.id)
        row["pending"] = pending
        row["load"] = round(load(node, engine.pending), 4) if node.weight > 0 else None
        row["static"] = node.id in engine.static and node.reported_at == 0
        rows.append(row)
    return web.json_response(
        {
            "cluster": request.app[ADMIN].cluster,
            "snapshot": snap.revision,
            "held": snap.held,
            "message": engine.message,
            "releases": [r.name for r in snap.releases],
            "nodes": rows,
        }
    )


@require("operator")
async def drain_node(request: web.Request) -> web.Response:
    node_id = request.match_info["node"]
    engine = request.app[ENGINE]
    if node_id not in engine.snapshot.nodes:
        return json_error(404, "not_found", f"no node {node_id!r} in the registry")
    try:
        body = parse_json(await request.read()) if request.can_read_body else {}
    except NotJson as exc:
        return json_error(400, "bad_request", f"body is not JSON: {exc}", field="body")
    over = drain_window(body.get("over_s", DRAIN_DEFAULT_S)) if isinstance(body, dict) else None
    if over is None:
        return json_error(
            400, "bad_request", f"over_s: seconds between 0 and {DRAIN_MAX_S}", field="over_s"
        )
    req = await request_drain(
        request.app[KV], request.app[ADMIN].prefix, node_id, over, who(request)
    )
    log.warning("drain of %s over %ss requested by %s", node_id, over, req.by)
    return web.json_response({"node": node_id, "draining": True, **to_data(req)})


@require("operator")
async def undrain_node(request: web.Request) -> web.Response:
    node_id = request.match_info["node"]
    removed = await drain_requests(request.app[KV], request.app[ADMIN].prefix).delete(node_id)
    return web.json_response({"node": node_id, "draining": False, "was_draining": removed})


@require("operator")
async def rebalance_nodes(request: web.Request) -> web.Response:
    """Write the cluster's rebalance request: the leader controller plans its rounds (each
    hot node's quota and whole-number slice of max_rate, from one snapshot of the loads)
    and the hot nodes shed by reconnect frames until max/mean <= until_ratio."""
    try:
        body = parse_json(await request.read()) if request.can_read_body else {}
    except NotJson as exc:
        return json_error(400, "bad_request", f"body is not JSON: {exc}", field="body")
    if not isinstance(body, dict):
        return json_error(400, "bad_request", "body must be a JSON object", field="body")
    rate, until = body.get("max_rate", 100.0), body.get("until_ratio", 1.1)
    problems = check(rate, until)
    if problems:
        return json_error(400, "bad_request", "; ".join(problems), field="body")
    req = RebalanceRequest(float(rate), float(until), time.time(), who(request))
    await rebalance_requests(request.app[KV], request.app[ADMIN].prefix).put(req)
    log.warning("rebalance (max %g/s, until %g) requested by %s", req.max_rate, until, req.by)
    return web.json_response({"rebalance": True, **to_data(req)})
