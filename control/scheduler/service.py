"""The scheduler's aiohttp edge: ``GET /v1/endpoint`` and the app that serves it with the
operator endpoints; control/launch.py mounts the admin API (control/admin/) into it."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from control.api import WITH_ADMIN, add_openapi, scheduler_document
from control.common.client_auth import (
    AuthFailure,
    CallbackVerifier,
    CircuitBreaker,
    ClientAuth,
    Identity,
    IdentityCache,
    JwksSource,
    JwtVerifier,
    check_claims,
)
from control.common.errors import BadRequest
from control.common.geoip import GeoDatabase
from control.common.kv import KeyValueStore
from control.common.ops import add_json_fallbacks, add_ops_routes, internal_error, json_error
from control.common.ratelimit import TokenBuckets, client_key
from control.common.wire import UID_RE
from control.gray.model import UserContext
from control.presence.cluster import PresenceCluster
from control.scheduler.config import SchedulerConfig
from control.scheduler.cors import Cors
from control.scheduler.demo import mount_demo
from control.scheduler.engine import Engine
from control.scheduler.feed import FEED, SnapshotFeed
from control.scheduler.geo import GeoReloader, build_region_map, open_geo
from control.scheduler.proximity import client_ip
from control.scheduler.request import parse_endpoint_query
from control.scheduler.served import ServedPublisher, scheduler_id
from control.scheduler.state import (
    AUTH,
    CONFIG,
    ENGINE,
    KV,
    METRICS,
    PRESENCE,
    STATE,
    SchedulerMetrics,
    SchedulerState,
)

log = logging.getLogger(__name__)

JSON = "application/json"
_json_str = json.encoder.encode_basestring


OTHER_USER = AuthFailure(403, "other_user", "the credential is for another uid")


def build_client_auth(config: SchedulerConfig) -> ClientAuth:
    """The client authentication ``config.client_auth`` asks for."""
    c = config.client_auth
    cache = IdentityCache(c.cache_size)
    if c.mode == "trust":
        return ClientAuth("trust", cache)
    if c.mode == "callback":
        cb = c.callback
        breaker = CircuitBreaker(cb.failures, cb.open_s)
        verifier = CallbackVerifier(cb.url, cb.timeout_s, cb.cache_s, breaker, UID_RE)
        return ClientAuth("callback", cache, callback=verifier)
    jwt_verifier = JwtVerifier(
        c.verify_keys(),
        audience=c.audience,
        issuer=c.issuer,
        leeway_s=c.leeway_s,
        uid_pattern=UID_RE,
    )
    auth = ClientAuth("jwt", cache, jwt_verifier)
    if c.jwks_url:
        auth.jwks = JwksSource(c.jwks_url, c.jwks_refresh_s, auth.apply_jwks)
        jwt_verifier.remote_loaded = False
        jwt_verifier.on_unknown_kid = auth.jwks.want
    return auth


def refusal(exc: AuthFailure) -> web.Response:
    """A 401 (with RFC 6750's WWW-Authenticate), 403 or 503 for a refused credential."""
    code = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "auth_unavailable")
    extra: dict[str, object] = {"reason": exc.reason}
    if exc.retry_after:
        extra["retry_after"] = exc.retry_after
    response = json_error(exc.status, code, exc.message, **extra)
    if exc.status == 401:
        challenge = 'Bearer realm="imctl"'
        if exc.reason != "missing":
            challenge += f', error="invalid_token", error_description="{exc.message}"'
        response.headers["WWW-Authenticate"] = challenge
    return response


class EndpointHandler:
    """``GET /v1/endpoint``: rate-limit, authenticate, parse, decide, sign."""

    def __init__(
        self,
        config: SchedulerConfig,
        engine: Engine,
        metrics: SchedulerMetrics,
        auth: ClientAuth | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.auth = build_client_auth(config) if auth is None else auth
        self.keys = config.tickets.ticket_keys()
        self.trusted = config.scheduler.trusted_proxies
        self.known_regions = frozenset(config.regions.known)
        rl = config.scheduler.rate_limit
        self.buckets = TokenBuckets(rl.rate_per_s, rl.burst, rl.max_clients)
        hb = config.heartbeat
        bo = config.backoff
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
        self.ttl = config.tickets.ttl_s
        cors = config.cors
        self.cors = Cors(cors.origins, cors.max_age_s) if cors.origins else None

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            headers = request.headers
            ip = client_ip(request.remote, headers.get("X-Forwarded-For"), self.trusted)
            # The rate limit comes first: it also bounds the signature checks one address
            # can make the scheduler do.
            wait = self.buckets.allow(client_key(ip))
            if wait > 0:
                self._count("none", "none", "rate_limited")
                response = json_error(
                    429,
                    "rate_limited",
                    "too many requests from this address",
                    retry_after=max(1, math.ceil(wait)),
                )
            elif self.auth.trusting:
                response = self.answer(request, ip, None)
            else:
                header = headers.get("Authorization")
                identity = self.auth.cached(header)  # a reconnect: no signature check
                if identity is None:
                    identity = await self.auth.authenticate(header)
                    self.metrics.auth.inc("verified")
                else:
                    self.metrics.auth.inc("cached")
                response = self.answer(request, ip, identity)
        except AuthFailure as exc:
            self.metrics.auth.inc(exc.reason)
            self._count("none", "none", "unauthorized" if exc.status == 401 else "refused")
            response = refusal(exc)
        except Exception:
            response = internal_error(request)
        if self.cors is not None:
            self.cors.mark(request, response)
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    def answer(
        self, request: web.Request, ip: str | None, identity: Identity | None
    ) -> web.Response:
        """The decision for a client past the rate limit; ``identity`` is who its credential
        proved it is (None: the trusting mode, uid= as given)."""
        try:
            q = parse_endpoint_query(
                request.raw_path.partition("?")[2].partition("#")[0], self.known_regions
            )
        except BadRequest as exc:
            self._count("none", "none", "bad_request")
            return json_error(400, "bad_request", str(exc), field=exc.field)
        if identity is not None:
            # The ticket is bound to the authenticated uid: asking for another is refused,
            # never answered with a ticket for either.
            if q.uid != identity.uid:
                raise OTHER_USER
            if identity.devices is not None or identity.platforms is not None:
                refused = check_claims(identity, q.device, q.platform)
                if refused is not None:
                    raise refused
        region = q.region or self.engine.region_map.region_of(ip)
        user = UserContext(q.uid, q.platform, q.version, region)
        decision = self.engine.assign(user)
        if decision is None:
            self._count("none", "none", "no_capacity")
            retry = self.config.scheduler.retry_after_s
            return json_error(
                503, "no_capacity", "no access node can take this client now", retry_after=retry
            )
        self._count(decision.strategy, decision.placement, "ok")
        track = "canary" if decision.strategy == "gray" else "stable"
        self.metrics.assignments.inc(decision.release or "none", track)
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


def build_engine(config: SchedulerConfig, geo: GeoDatabase | None = None) -> Engine:
    """The engine for ``config``; ``geo`` is the open geo database (opened here when
    configured and not given)."""
    if geo is None:
        geo = open_geo(config.regions.geoip)
    return Engine(
        build_region_map(config.regions, geo),
        static_nodes=[n.record() for n in config.registry.static_nodes],
        releases=config.gray.releases,
        policy=config.registry.self_preservation.policy(),
        fallback_count=config.scheduler.fallbacks,
        pending_window_s=config.registry.pending_window_s,
    )


PUBLISHER = web.AppKey("served_publisher", ServedPublisher)


def create_app(
    config: SchedulerConfig,
    kv: KeyValueStore,
    presence: PresenceCluster,
    mounts: Sequence[Callable[[web.Application], None]] = (),
    name: str | None = None,
    demo: bool = False,
) -> web.Application:
    """The scheduler application on backends its caller opens and closes (launch.py).
    ``mounts`` add routes of the layers above (the admin API) before the JSON fallbacks;
    ``name`` is the id its served-releases record goes under (default: host, pid, random);
    ``demo`` serves the demo web client at ``/demo/``."""
    app = web.Application()
    metrics = SchedulerMetrics()
    geo = open_geo(config.regions.geoip)
    engine = build_engine(config, geo)
    reloader = None
    if geo is not None:
        metrics.geoip_built.set(geo.info.build_epoch)
        reloader = GeoReloader(
            config.regions, engine, geo, lambda info: metrics.geoip_built.set(info.build_epoch)
        )
    state = SchedulerState()
    auth = build_client_auth(config)
    if auth.trusting:
        log.warning(
            "client_auth.mode is trust: GET /v1/endpoint takes uid= as given, with no "
            "credential (tests and benchmarks only; allowed on loopback listeners only)"
        )
    feed = SnapshotFeed(
        engine,
        kv,
        config.cluster.prefix,
        metrics,
        rebuild_s=config.scheduler.rebuild_s,
        verify_s=config.registry.verify_s,
    )
    publisher = ServedPublisher(
        kv,
        config.cluster.prefix,
        name or scheduler_id(),
        lambda: feed.served,
        config.registry.lease_ttl_s,
    )
    feed.on_build = publisher.changed
    app[PUBLISHER] = publisher
    app[AUTH] = auth
    app[CONFIG] = config
    app[ENGINE] = engine
    app[FEED] = feed
    app[METRICS] = metrics
    app[STATE] = state
    app[KV] = kv
    app[PRESENCE] = presence
    engine.rebuild()
    metrics.observe_snapshot(engine.snapshot.nodes, engine.snapshot.held)

    async def publish(stop: asyncio.Event) -> None:
        await feed.synced.wait()  # publish what the first full snapshot serves, not {}
        await publisher.run(stop)

    async def tasks_ctx(app: web.Application) -> AsyncIterator[None]:
        state.backend = kv.name
        state.supervisor.spawn("node-mirror", feed.nodes.run)
        state.supervisor.spawn("gray-mirror", feed.gray.run)
        state.supervisor.spawn("stable-mirror", feed.stable.run)
        state.supervisor.spawn("snapshot-feed", feed.run)
        state.supervisor.spawn("served-releases", publish)
        if reloader is not None:
            state.supervisor.spawn("geoip-reload", reloader.run)
        if auth.jwks is not None:
            state.supervisor.spawn("jwks-refresh", auth.jwks.run)
        yield
        await state.supervisor.close(timeout=3.0)
        await publisher.close()  # its task may have been cancelled before its own close
        await auth.close()
        if reloader is not None:
            reloader.close()

    async def end_streams(app: web.Application) -> None:
        state.stopping.set()  # before aiohttp waits for handlers: tails would hold it up

    app.on_shutdown.append(end_streams)
    app.cleanup_ctx.append(tasks_ctx)
    endpoint = EndpointHandler(config, engine, metrics, auth)
    app.router.add_get("/v1/endpoint", endpoint.handle, allow_head=False)  # HEAD must not decide
    cors = endpoint.cors or Cors((), config.cors.max_age_s)  # preflights refused, clearly
    app.router.add_route("OPTIONS", "/v1/endpoint", cors.answer)
    if demo:
        mount_demo(app)
    for mount in mounts:
        mount(app)
    add_openapi(app, lambda: scheduler_document(app.get(WITH_ADMIN, False), demo))
    add_ops_routes(
        app,
        state.supervisor,
        metrics.registry,
        lambda: (
            feed.synced.is_set() and not state.leaving,
            {"backend": state.backend, "stopping": state.leaving},
        ),
        config.metrics_readers,
    )
    add_json_fallbacks(app)
    return app
