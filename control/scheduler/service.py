"""The scheduler's aiohttp edge: ``GET /v1/endpoint`` and the operator endpoints."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
)

from control.common.auth import Role, TokenTable
from control.common.errors import BackendUnavailable, BadRequest, NotJson, parse_json
from control.common.geoip import GeoDatabase
from control.common.kv import KeyValueStore
from control.common.metrics import LoopCounter, LoopHistogram
from control.common.mirror import PrefixMirror
from control.common.ops import (
    Handler,
    add_json_fallbacks,
    add_ops_routes,
    guarded,
    internal_error,
    json_error,
)
from control.common.ratelimit import TokenBuckets, client_key
from control.common.registry import (
    DRAIN_DEFAULT_S,
    DRAIN_MAX_S,
    NodeRecord,
    Registry,
    drain_prefix,
    drain_window,
)
from control.common.tasks import Supervisor
from control.gray.model import Release, UserContext
from control.gray.store import GrayStore
from control.presence.cluster import PresenceCluster
from control.presence.model import PresenceEvent
from control.runtime import make_kv, make_presence
from control.scheduler.engine import Engine
from control.scheduler.geo import GeoReloader, build_region_map, open_geo
from control.scheduler.pipeline import explain_decision, load
from control.scheduler.proximity import client_ip
from control.scheduler.request import UID_RE, parse_endpoint_query
from control.settings import Settings

log = logging.getLogger(__name__)
disable_created_metrics()  # the _created series only add noise to dashboards

ENGINE = web.AppKey("engine", Engine)
SETTINGS = web.AppKey("settings", Settings)

JSON = "application/json"
_json_str = json.encoder.encode_basestring


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Updated on every request: lock-free loop metrics (see control/common/metrics.py).
        self.decisions = LoopCounter(
            "imctl_scheduler_decisions_total",
            "Endpoint decisions by strategy, placement and result",
            ["strategy", "placement", "result"],
            self.registry,
        )
        self.latency = LoopHistogram(
            "imctl_scheduler_decision_seconds",
            "Time to answer GET /v1/endpoint, parsing to response",
            (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            self.registry,
        )
        self.nodes = Gauge(
            "imctl_scheduler_nodes",
            "Nodes in the serving snapshot by state, pool and region",
            ["state", "pool", "region"],
            registry=self.registry,
        )
        self.held = Gauge(
            "imctl_scheduler_snapshot_held",
            "1 while self-preservation holds the last view of the registry",
            registry=self.registry,
        )
        self.builds = Counter(
            "imctl_scheduler_snapshot_builds_total", "Snapshots built", registry=self.registry
        )
        self.rebuild_failures = Counter(
            "imctl_scheduler_snapshot_build_failures_total",
            "Snapshot builds that failed (the previous snapshot kept serving)",
            registry=self.registry,
        )
        self.ready = Gauge(
            "imctl_scheduler_ready", "1 when the registry view is synced", registry=self.registry
        )
        self.event_tails = Gauge(
            "imctl_scheduler_event_tails",
            "Open GET /v1/presence/events streams (capped by scheduler.max_event_tails)",
            registry=self.registry,
        )
        self.geoip_built = Gauge(
            "imctl_scheduler_geoip_build_timestamp_seconds",
            "When the geo database in use was built (alert when it grows old)",
            registry=self.registry,
        )

    def observe_snapshot(self, nodes: Mapping[str, NodeRecord], held: bool) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for n in nodes.values():
            key = (n.state, n.pool, n.region)
            counts[key] = counts.get(key, 0) + 1
        self.nodes.clear()
        for (state, pool, region), count in counts.items():
            self.nodes.labels(state, pool, region).set(count)
        self.held.set(1 if held else 0)
        self.builds.inc()


class SchedulerState:
    """Process-level state: the supervisor and whether the registry view is synced."""

    def __init__(self) -> None:
        self.supervisor = Supervisor("scheduler")
        self.synced = asyncio.Event()
        self.backend = "none"
        self.mirrors: dict[str, PrefixMirror[Any]] = {}
        self.stopping = asyncio.Event()  # set at shutdown: open event tails end
        self.tails = 0  # open GET /v1/presence/events
        self.leaving = False  # SIGTERM seen: /readyz says 503 through the shutdown grace
        self._rebuild_handle: asyncio.TimerHandle | None = None
        self._hold_handle: asyncio.TimerHandle | None = None


METRICS = web.AppKey("metrics", SchedulerMetrics)
STATE = web.AppKey("state", SchedulerState)


def require(role: Role) -> Callable[..., Any]:
    def wrap(handler: Handler) -> Any:
        @guarded
        async def checked(request: web.Request) -> web.StreamResponse:
            table: TokenTable = request.app[SETTINGS].admin.grants()
            granted = table.role_of(request.headers.get("Authorization"))
            if granted is None:
                return json_error(401, "unauthorized", "a bearer token is required")
            if not table.allows(granted, role):
                return json_error(403, "forbidden", f"this needs the {role} role")
            return await handler(request)

        return checked

    return wrap


class EndpointHandler:
    """``GET /v1/endpoint``: parse, rate-limit, decide, sign."""

    def __init__(self, settings: Settings, engine: Engine, metrics: SchedulerMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.keys = settings.tickets.ticket_keys()
        self.trusted = settings.scheduler.trusted_proxies
        self.known_regions = frozenset(settings.regions.known)
        rl = settings.scheduler.rate_limit
        self.buckets = TokenBuckets(rl.rate_per_s, rl.burst, rl.max_clients)
        hb = settings.heartbeat
        bo = settings.backoff
        self.heartbeat = {"interval_s": hb.interval_s, "timeout_s": hb.timeout_s}
        self.backoff = {
            "base_s": bo.base_s,
            "factor": bo.factor,
            "jitter": bo.jitter,
            "max_s": bo.max_s,
        }
        self.static_tail = (
            f'"heartbeat":{json.dumps(self.heartbeat, separators=(",", ":"))},'
            f'"backoff":{json.dumps(self.backoff, separators=(",", ":"))}'
        )
        self.ttl = settings.tickets.ttl_s

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            response = self.answer(request)
        except Exception:
            response = internal_error(request)
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    def answer(self, request: web.Request) -> web.Response:
        ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), self.trusted)
        wait = self.buckets.allow(client_key(ip))
        if wait > 0:
            self._count("none", "none", "rate_limited")
            return json_error(
                429,
                "rate_limited",
                "too many requests from this address",
                retry_after=max(1, math.ceil(wait)),
            )
        try:
            q = parse_endpoint_query(
                request.raw_path.partition("?")[2].partition("#")[0], self.known_regions
            )
        except BadRequest as exc:
            self._count("none", "none", "bad_request")
            return json_error(400, "bad_request", str(exc), field=exc.field)
        region = q.region or self.engine.region_map.region_of(ip)
        user = UserContext(q.uid, q.platform, q.version, region)
        decision = self.engine.assign(user)
        if decision is None:
            self._count("none", "none", "no_capacity")
            retry = self.settings.scheduler.retry_after_s
            return json_error(
                503, "no_capacity", "no access node can take this client now", retry_after=retry
            )
        self._count(decision.strategy, decision.placement, "ok")
        ttl = self.ttl
        sign = self.keys.signer(q.uid, q.device, int(time.time()) + ttl)
        fragments = self.engine.snapshot.fragments
        node = decision.node
        fallbacks = ",".join(
            f'{{{fragments[n.id]},"ticket":"{sign(n.id)}"}}' for n in decision.fallbacks
        )
        # Assembled from escaped pieces: json.dumps of the whole dict was the slowest step.
        body = (
            f'{{{fragments[node.id]},"region":{_json_str(decision.region)},'
            f'"track":{_json_str(decision.track)},"ticket":"{sign(node.id)}",'
            f'"expires_in":{ttl},"fallbacks":[{fallbacks}],{self.static_tail}}}'
        )
        return web.Response(body=body.encode(), content_type=JSON)

    def _count(self, strategy: str, placement: str, result: str) -> None:
        self.metrics.decisions.inc(strategy, placement, result)


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


PRESENCE = web.AppKey("presence", PresenceCluster)
KV = web.AppKey("kv", KeyValueStore)


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
        q = parse_endpoint_query(request.query_string, frozenset(settings.regions.known))
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
EVENTS_COUNT_MAX = 1_000_000


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
        digits = raw_count.isascii() and raw_count.isdigit()  # "²" is a digit int() refuses
        count = int(raw_count) if digits and len(raw_count) <= 7 else 0
        if not 1 <= count <= EVENTS_COUNT_MAX:
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
        stopping.cancel()
        follower.cancel()
        (failed,) = await asyncio.gather(follower, return_exceptions=True)
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
    table = request.app[SETTINGS].admin.grants()
    header = request.headers.get("Authorization", "")
    for grant in table.grants:
        if header == f"Bearer {grant.token}":
            return grant.name
    return "anonymous (open admin API)"


def build_engine(settings: Settings, geo: GeoDatabase | None = None) -> Engine:
    """The engine for ``settings``; ``geo`` is the open geo database (opened here when
    configured and not given)."""
    if geo is None:
        geo = open_geo(settings.regions.geoip)
    return Engine(
        build_region_map(settings.regions, geo),
        static_nodes=[n.record() for n in settings.registry.static_nodes],
        releases=settings.gray.releases,
        policy=settings.registry.self_preservation.policy(),
        fallback_count=settings.scheduler.fallbacks,
        # Nodes report at least every TTL/3; a count older than a TTL is surely included.
        pending_window_s=float(settings.registry.lease_ttl_s),
    )


def create_app(
    settings: Settings,
    kv: KeyValueStore | None = None,
    presence: PresenceCluster | None = None,
) -> web.Application:
    """The scheduler application. ``kv`` and ``presence`` share already-open backends
    (in-process clusters); otherwise they are opened from the settings."""
    app = web.Application()
    metrics = SchedulerMetrics()
    geo = open_geo(settings.regions.geoip)
    engine = build_engine(settings, geo)
    reloader = None
    if geo is not None:
        metrics.geoip_built.set(geo.info.build_epoch)
        reloader = GeoReloader(
            settings.regions, engine, geo, lambda info: metrics.geoip_built.set(info.build_epoch)
        )
    state = SchedulerState()
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[METRICS] = metrics
    app[STATE] = state
    engine.rebuild()
    metrics.observe_snapshot(engine.snapshot.nodes, engine.snapshot.held)

    def rebuild_now() -> None:
        state._rebuild_handle = None
        try:
            message = engine.rebuild()
        except Exception:
            # Keep answering from the last good snapshot; the next change tries again.
            log.exception("snapshot rebuild failed; serving the previous snapshot")
            metrics.rebuild_failures.inc()
            return
        metrics.observe_snapshot(engine.snapshot.nodes, engine.snapshot.held)
        log.debug("%s", message)
        if state._hold_handle is not None:
            state._hold_handle.cancel()
            state._hold_handle = None
        remaining = engine.hold_remaining()
        if remaining is not None:
            # A quiet registry sends no change to end the hold: look again when grace ends.
            loop = asyncio.get_running_loop()
            state._hold_handle = loop.call_later(remaining + 0.05, rebuild_now)

    def changed() -> None:
        delay = settings.scheduler.rebuild_s
        if delay <= 0:
            rebuild_now()
        elif state._rebuild_handle is None:
            state._rebuild_handle = asyncio.get_running_loop().call_later(delay, rebuild_now)

    def on_nodes(nodes: Mapping[str, NodeRecord]) -> None:
        engine.set_nodes(nodes)
        changed()

    def on_releases(releases: Mapping[str, Release]) -> None:
        engine.set_releases(releases)
        changed()

    own = kv is None
    store = make_kv(settings.cluster) if kv is None else kv
    own_presence = presence is None
    app[KV] = store
    app[PRESENCE] = make_presence(settings) if presence is None else presence

    async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
        state.backend = store.name
        if own:
            try:
                await store.connect()
            except BackendUnavailable as exc:
                log.warning("backend not reachable yet (%s); serving static nodes meanwhile", exc)
        prefix = settings.cluster.prefix
        verify = settings.registry.verify_s
        nodes = Registry(store, prefix).mirror(on_nodes, verify_s=verify)
        gray = GrayStore(store, prefix).mirror(on_releases, verify_s=verify)
        state.mirrors = {"nodes": nodes, "gray": gray}
        state.supervisor.spawn("node-mirror", nodes.run)
        state.supervisor.spawn("gray-mirror", gray.run)

        async def ready_when_synced(stop: asyncio.Event) -> None:
            await nodes.synced.wait()
            await gray.synced.wait()
            rebuild_now()
            state.synced.set()
            metrics.ready.set(1)
            await stop.wait()

        state.supervisor.spawn("readiness", ready_when_synced)
        if reloader is not None:
            state.supervisor.spawn("geoip-reload", reloader.run)
        yield
        await state.supervisor.close(timeout=3.0)
        if reloader is not None:
            reloader.close()
        for handle in (state._rebuild_handle, state._hold_handle):
            if handle is not None:
                handle.cancel()
        if own:
            await store.close()
        if own_presence:
            await app[PRESENCE].close()

    async def end_streams(app: web.Application) -> None:
        state.stopping.set()  # before aiohttp waits for handlers: tails would hold it up

    app.on_shutdown.append(end_streams)
    app.cleanup_ctx.append(backend_ctx)
    endpoint = EndpointHandler(settings, engine, metrics).handle
    app.router.add_get("/v1/endpoint", endpoint, allow_head=False)  # HEAD must not decide
    app.router.add_get("/v1/nodes", nodes_handler)
    app.router.add_get("/v1/explain", explain_endpoint)
    app.router.add_post("/v1/nodes/{node}/drain", drain_node)
    app.router.add_delete("/v1/nodes/{node}/drain", undrain_node)
    app.router.add_get("/v1/presence/count", presence_count)
    app.router.add_get("/v1/presence/events", presence_events)
    app.router.add_post("/v1/presence/lookup", presence_lookup)
    app.router.add_get("/v1/presence/{uid}", presence_who)
    add_ops_routes(
        app,
        state.supervisor,
        metrics.registry,
        lambda: (
            state.synced.is_set() and not state.leaving,
            {"backend": state.backend, "stopping": state.leaving},
        ),
    )
    add_json_fallbacks(app)
    return app
