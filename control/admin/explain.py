"""``/v1/explain``: why a client would get the track and region it gets, from the
scheduler's pure pipeline over its current snapshot."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from control.admin.auth import ADMIN, require
from control.common.errors import BadRequest
from control.common.ops import json_error
from control.gray.model import UserContext
from control.scheduler.pipeline import explain_decision
from control.scheduler.request import parse_endpoint_query
from control.scheduler.state import ENGINE


@require("viewer")
async def explain_endpoint(request: web.Request) -> web.Response:
    """Why a client would get the track and region it gets: ``/v1/endpoint``'s parameters
    (plus ``ip=`` to place it by address), answered without assigning, counting or
    signing anything."""
    engine = request.app[ENGINE]
    try:
        # The raw query, as /v1/endpoint reads it: request.query_string is decoded once
        # already, and parsing decodes again (uid=a%252Bb would read as "a+b").
        raw = request.raw_path.partition("?")[2].partition("#")[0]
        q = parse_endpoint_query(raw, request.app[ADMIN].known_regions)
    except BadRequest as exc:
        return json_error(400, "bad_request", str(exc), field=exc.field)
    ip = request.query.get("ip")
    if ip is not None:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            return json_error(400, "bad_request", "ip: not an IP address", field="ip")
    region: str | None = q.region
    source = "parameter"
    if region is None:
        region, source = engine.region_map.placed_by(ip)
    user = UserContext(q.uid, q.platform, q.version, region)
    ranking = engine.region_map.ranking(region)
    why = explain_decision(engine.snapshot, engine.releases(), user, ranking, engine.pending)
    return web.json_response(
        {
            "uid": q.uid,
            "platform": q.platform,
            "version": request.query.get("version", str(q.version)),  # as given
            "ip": ip,
            "region": region,
            "region_from": source,
            "track": why.track,
            "strategy": why.strategy,
            "releases": [v._asdict() for v in why.verdicts],
            "ranking": list(ranking),
            "regions": [r._asdict() for r in why.regions],
            "would_connect_in": why.region,
        }
    )
