"""The scheduler's admin API: nodes and drains, presence (who, lookup, counts, event
tails) and decision explanations. Viewers read, operators change."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from typing import Any

from aiohttp import web

from control.common.auth import bearer
from control.common.errors import BadRequest, NotJson, parse_json
from control.common.ops import json_error
from control.common.registry import DRAIN_DEFAULT_S, DRAIN_MAX_S, drain_prefix, drain_window
from control.gray.model import UserContext
from control.presence.model import PresenceEvent
from control.scheduler.pipeline import explain_decision, load
from control.scheduler.request import (
    EVENTS_COUNT_MAX,
    UID_RE,
    event_count,
    parse_endpoint_query,
)
from control.scheduler.state import ENGINE, GRANTS, KV, METRICS, PRESENCE, SETTINGS, STATE, require
from control.settings import Settings

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
            "cluster": request.app[SETTINGS].cluster.name,
            "snapshot": snap.revision,
            "held": snap.held,
            "message": engine.message,
            "releases": [r.name for r in snap.releases],
            "nodes": rows,
        }
    )


@require("viewer")
async def presence_who(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    if not UID_RE.fullmatch(uid):
        return json_error(400, "bad_request", "uid: not a valid uid", field="uid")
    entries = await request.app[PRESENCE].who(uid)  # down: guarded() answers 503
    return web.json_response(
        {"uid": uid, "online": bool(entries), "devices": [e.public() for e in entries]}
    )


@require("viewer")
async def presence_count(request: web.Request) -> web.Response:
    by = request.query.get("by")
    if by not in (None, "region", "node", "platform"):
        return json_error(400, "bad_request", "by: one of region, node, platform", field="by")
    counts = await request.app[PRESENCE].counts()
    body: dict[str, Any] = {"total": counts.total}
    if by:
        body["by"] = by
        body["counts"] = dict(sorted(counts.by(by).items()))
    return web.json_response(body)


LOOKUP_MAX = 10_000  # uids per lookup: one batch locate, answered in a few ms


@require("viewer")
async def presence_lookup(request: web.Request) -> web.Response:
    """Where many users are connected, in one batch ``locate``: ``{"uids": [...]}`` in,
    each online user's devices and the offline uids out (no last_seen: that would cost a
    read per user)."""
    try:
        body = parse_json(await request.read())
    except NotJson as exc:
        return json_error(400, "bad_request", f"body is not JSON: {exc}", field="body")
    uids = body.get("uids") if isinstance(body, dict) else None
    if not isinstance(uids, list) or not 1 <= len(uids) <= LOOKUP_MAX:
        message = f"uids: a list of 1 to {LOOKUP_MAX} uids"
        return json_error(400, "bad_request", message, field="uids")
    for i, uid in enumerate(uids):
        if not isinstance(uid, str) or not UID_RE.fullmatch(uid):
            shown = repr(uid) if len(repr(uid)) <= 40 else repr(uid)[:40] + "..."
            return json_error(400, "bad_request", f"uids[{i}]: {shown} is not a uid", field="uids")
    wanted = list(dict.fromkeys(uids))
    found = await request.app[PRESENCE].locate(wanted)  # down: guarded() answers 503
    online: dict[str, list[dict[str, object]]] = {}
    offline: list[str] = []
    for uid in wanted:
        entries = found.get(uid)
        if entries:
            online[uid] = [
                {k: v for k, v in e.public().items() if k != "last_seen"} for e in entries
            ]
        else:
            offline.append(uid)
    return web.json_response({"online": online, "offline": offline})


@require("viewer")
async def explain_endpoint(request: web.Request) -> web.Response:
    """Why a client would get the track and region it gets: ``/v1/endpoint``'s parameters
    (plus ``ip=`` to place it by address), answered without assigning, counting or
    signing anything."""
    settings = request.app[SETTINGS]
    engine = request.app[ENGINE]
    try:
        # The raw query, as /v1/endpoint reads it: request.query_string is decoded once
        # already, and parsing decodes again (uid=a%252Bb would read as "a+b").
        raw = request.raw_path.partition("?")[2].partition("#")[0]
        q = parse_endpoint_query(raw, frozenset(settings.regions.known))
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


EVENTS_KEEPALIVE_S = 10.0  # a blank line this often keeps proxies from dropping a quiet tail
EVENTS_CHECK_S = 1.0  # how soon a tail whose reader left gives up its place


def _event_line(event: PresenceEvent) -> bytes:
    fields = {f: getattr(event, f) for f in event.__dataclass_fields__}
    return json.dumps(fields, ensure_ascii=False).encode() + b"\n"


@require("viewer")
async def presence_events(request: web.Request) -> web.StreamResponse:
    """Online, offline and status changes as they happen, one JSON object a line, from
    every shard; ``uid`` keeps one user's, ``count`` ends the stream after that many."""
    uid = request.query.get("uid")
    if uid is not None and not UID_RE.fullmatch(uid):
        return json_error(400, "bad_request", "uid: not a valid uid", field="uid")
    raw_count = request.query.get("count")
    count = None
    if raw_count is not None:
        count = event_count(raw_count)
        if count is None:
            message = f"count: a whole number from 1 to {EVENTS_COUNT_MAX}"
            return json_error(400, "bad_request", message, field="count")
    presence = request.app[PRESENCE]
    state = request.app[STATE]
    cap = request.app[SETTINGS].scheduler.max_event_tails
    if state.tails >= cap:
        # Each tail keeps a shard connection in a blocking read most of the time.
        message = f"{cap} event tails are open on this scheduler (scheduler.max_event_tails)"
        return json_error(503, "too_many_tails", message, retry_after=5)
    # Pinned before the answer starts: what happens after the 200 is in the stream.
    start = await presence.event_positions()  # down: guarded() answers 503
    stop = asyncio.Event()
    queue: asyncio.Queue[PresenceEvent] = asyncio.Queue(maxsize=1000)

    async def follow() -> None:
        async for event in presence.events(block_ms=1000, start=start, stop=stop):
            if uid is None or event.uid == uid:
                await queue.put(event)  # a slow reader backs the followers up, boundedly

    response = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    follower = asyncio.create_task(follow(), name="presence-events")
    stopping = asyncio.ensure_future(state.stopping.wait())
    getter: asyncio.Future[PresenceEvent] | None = None
    sent = 0
    quiet_since = time.monotonic()
    state.tails += 1
    metrics = request.app[METRICS]
    metrics.event_tails.set(state.tails)
    try:
        while count is None or sent < count:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, stopping, follower},
                timeout=EVENTS_CHECK_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter in done:
                await response.write(_event_line(getter.result()))
                sent += 1
                quiet_since = time.monotonic()
                continue
            getter.cancel()
            if done:  # shutting down, or the follower ended
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the reader left: free its place (and its shard reads) now
            if time.monotonic() - quiet_since >= EVENTS_KEEPALIVE_S:
                await response.write(b"\n")  # through proxies that drop quiet streams
                quiet_since = time.monotonic()
    except ConnectionError:
        pass  # the reader went away mid-write
    finally:
        state.tails -= 1
        metrics.event_tails.set(state.tails)
        stop.set()
        # Cancelled and awaited, every one: a task dropped while pending is logged by
        # asyncio ("Task was destroyed but it is pending!") once per tail that ended.
        pending = [f for f in (getter, stopping, follower) if f is not None]
        for f in pending:
            f.cancel()
        *_, failed = await asyncio.gather(*pending, return_exceptions=True)
        if isinstance(failed, Exception):  # the stream ended early: say why, once
            log.error("presence event tail ended: %r", failed, exc_info=failed)
    return response


def _drain_key(settings: Settings, node_id: str) -> str:
    return drain_prefix(settings.cluster.prefix) + node_id


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
    settings = request.app[SETTINGS]
    record = {"over_s": over, "at": time.time(), "by": _who(request)}
    await request.app[KV].put(_drain_key(settings, node_id), json.dumps(record).encode())
    log.warning("drain of %s over %ss requested by %s", node_id, over, record["by"])
    return web.json_response({"node": node_id, "draining": True, **record})


@require("operator")
async def undrain_node(request: web.Request) -> web.Response:
    node_id = request.match_info["node"]
    removed = await request.app[KV].delete(_drain_key(request.app[SETTINGS], node_id))
    return web.json_response({"node": node_id, "draining": False, "was_draining": removed})


def _who(request: web.Request) -> str:
    token = bearer(request.headers.get("Authorization"))
    grant = request.app[GRANTS].grant_of(token) if token is not None else None
    return grant.name if grant is not None else "anonymous (open admin API)"


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/v1/nodes", nodes_handler)
    app.router.add_get("/v1/explain", explain_endpoint)
    app.router.add_post("/v1/nodes/{node}/drain", drain_node)
    app.router.add_delete("/v1/nodes/{node}/drain", undrain_node)
    app.router.add_get("/v1/presence/count", presence_count)
    app.router.add_get("/v1/presence/events", presence_events)
    app.router.add_post("/v1/presence/lookup", presence_lookup)
    app.router.add_get("/v1/presence/{uid}", presence_who)
