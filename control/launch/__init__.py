"""Running processes: one component each (scheduler, access node, controller), or the whole
local cluster in one process on shared backends (``imctl up``).

The one place that turns Settings into components: it picks the embedded or real backends,
owns them (one cleanup context per process part, or the shared pair of ``imctl up``), and
builds each component's own config (the scheduler and the admin API never see Settings)."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import cast

from aiohttp import web

from control.access.app import create_app as access_app
from control.access.config import NodeConfig
from control.access.node import AccessNode
from control.admin.config import AdminConfig
from control.admin.routes import mount as admin_routes
from control.common.config import ClusterSettings, ConnectionSettings, TlsSettings
from control.common.errors import BackendUnavailable, ImctlError
from control.common.guard import ConnectionGuard, GuardedSite, install_loop_handler
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.ops import METRICS
from control.common.proxied import ProxiedSite, ProxyPolicy
from control.common.tasks import Supervisor
from control.common.tls import CertificateError, CertificateReloader, server_context
from control.launch.banner import banner as banner
from control.launch.banner import banner_data as banner_data
from control.launch.banner import imctl_command as imctl_command
from control.launch.gray import attach_stepper
from control.launch.rebalance import attach_rebalancer
from control.launch.ring import RingWiring, ring_mover, ring_spec
from control.presence.cluster import PresenceCluster
from control.presence.controller import Controller
from control.presence.follower import ring_reader
from control.presence.ringstore import RingStore
from control.presence.service import create_app as controller_app
from control.presence.shards import open_shard_for
from control.scheduler.config import SchedulerConfig
from control.scheduler.service import create_app as scheduler_create_app
from control.scheduler.state import STATE
from control.settings import Settings

log = logging.getLogger("imctl")
EXIT_UNAVAILABLE = 1
RING_FOLLOWER = web.AppKey("ring_follower", Supervisor)


@dataclass
class Part:
    """One listening application of the process."""

    name: str
    app: web.Application
    host: str
    port: int
    runner: web.AppRunner | None = None
    supervisor: Supervisor | None = None
    node: AccessNode | None = None
    # Asked to stop: turn unready, then keep serving this long (a load balancer's turn).
    leave: Callable[[], None] | None = None
    grace_s: float = 0.0
    # Stop following the registry: in one process with the access nodes (imctl up), their
    # leaving is this process's own shutdown, not a mass loss to hold a view through.
    unwatch: Callable[[], Awaitable[None]] | None = None
    # The ring follower of the presence cluster this part owns (or of imctl up's shared one).
    ring: Supervisor | None = None
    # A second listener for the load balancer (PROXY v2 first on every connection).
    proxy_port: int = 0
    proxy: ProxyPolicy | None = None
    # Its certificate (HTTPS/WSS), loaded at start and reloaded in place when renewed.
    tls: TlsSettings = field(default_factory=TlsSettings)
    reloader: CertificateReloader | None = None

    def supervisors(self) -> list[Supervisor]:
        return [s for s in (self.supervisor, self.ring) if s is not None]


@dataclass
class Process:
    parts: list[Part] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    guard: ConnectionGuard | None = None
    _unguard: Callable[[], None] | None = None

    async def start(self) -> str | None:
        """Bind every part; returns an error message instead of raising."""
        # One guard for the process: its caps count every part's connections.
        guard = self.guard = ConnectionGuard(self.connections.limits())
        self._unguard = install_loop_handler(asyncio.get_running_loop(), guard)
        for part in self.parts:
            runner = web.AppRunner(
                part.app, access_log=None, handle_signals=False, shutdown_timeout=5.0
            )
            try:
                await runner.setup()  # opens the part's backends
            except ImctlError as exc:  # etcd or Redis unreachable, say: fail fast and clearly
                await runner.cleanup()
                return f"cannot start {part.name}: {exc}"
            part.runner = runner
            if METRICS in part.app:
                guard.register(part.app[METRICS])
            try:
                context = self._tls(part)
            except CertificateError as exc:  # replaced or gone since the config was checked
                return f"cannot start {part.name}: {exc}"
            site = GuardedSite(runner, guard, part.host, part.port, backlog=4096, ssl=context)
            try:
                await site.start()
            except OSError as exc:
                return f"cannot listen on {part.host}:{part.port} for {part.name}: {exc.strerror}"
            if part.proxy is not None and part.proxy_port:
                # TLS passthrough: the balancer relays the client's TLS, which starts after
                # the PROXY header, with the same (reloaded in place) context; a balancer
                # that terminates TLS relays plain bytes.
                policy = replace(part.proxy, ssl=context if part.proxy.passthrough else None)
                relayed = ProxiedSite(runner, guard, part.host, part.proxy_port, policy)
                try:
                    await relayed.start()
                except OSError as exc:
                    return (
                        f"cannot listen on {part.host}:{part.proxy_port} for {part.name}'s "
                        f"load balancer: {exc.strerror}"
                    )
        return None

    @staticmethod
    def _tls(part: Part) -> ssl.SSLContext | None:
        """The part's server context, its reloader a supervised task (``tls-reload``)."""
        tls = part.tls
        if not tls.enabled:
            return None
        context, _ = server_context(tls.cert, tls.key)
        part.reloader = CertificateReloader(
            context, tls.cert, tls.key, tls.reload_s, name=part.name
        )
        if METRICS in part.app:
            part.reloader.register(part.app[METRICS])
        if part.supervisor is not None:
            part.supervisor.spawn("tls-reload", part.reloader.run)
        return context

    def failures(self) -> list[str]:
        return [f"{p.name}: {s.failure}" for p in self.parts for s in p.supervisors() if s.failure]

    async def wait(self) -> None:
        """Until SIGINT/SIGTERM or until a part's background task dies."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        waiters = [asyncio.ensure_future(self.stop.wait())]
        waiters += [
            asyncio.ensure_future(s.failed.wait()) for p in self.parts for s in p.supervisors()
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()

    async def close(self, drain_s: float, graceful: bool = True) -> None:
        """Access nodes drain and schedulers sit out their grace first (both still
        serving), then everything stops. Not graceful (a part failed): no grace."""
        for part in self.parts:
            if part.leave is not None:
                part.leave()
        grace = max((p.grace_s for p in self.parts), default=0.0) if graceful else 0.0
        if grace:
            log.warning("stopping in %gs: /readyz answers 503 meanwhile", grace)
        nodes = [p.node for p in self.parts if p.node is not None]
        if nodes:
            # Before the nodes revoke their leases: a scheduler or controller that watched
            # them go would log "self-preservation: 3/3 nodes vanished at once" (and the
            # controller would evict them). Nothing here needs the registry any more.
            await asyncio.gather(*(p.unwatch() for p in self.parts if p.unwatch is not None))
        await asyncio.gather(asyncio.sleep(grace), *(n.stop(drain_s) for n in nodes))
        for part in reversed(self.parts):
            if part.runner is not None:
                await part.runner.cleanup()
        if self._unguard is not None:  # the loop may outlive the process (tests, imctl up)
            self._unguard()
            self._unguard = None


async def _run(process: Process, banner: str | None, drain_s: float) -> int:
    error = await process.start()
    if error is not None:
        await process.close(0, graceful=False)
        print(f"imctl: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    # Config, tables and snapshots live as long as the process: keep them out of the
    # cyclic collector's passes on the request path.
    gc.collect()
    gc.freeze()
    if banner:
        print(banner, flush=True)
    await process.wait()
    failures = process.failures()
    await process.close(0 if failures else drain_s, graceful=not failures)
    if failures:
        print(f"imctl: stopped: {'; '.join(failures)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def make_kv(cluster: ClusterSettings) -> KeyValueStore:
    """The key-value store ``cluster.backend`` names (not yet connected)."""
    if cluster.backend == "etcd":
        from control.common.kv.etcd import EtcdKV

        return EtcdKV(cluster.etcd.endpoints, timeout_s=cluster.etcd.timeout_s)
    return EmbeddedKV()


def make_presence(settings: Settings, kv: KeyValueStore | None = None) -> PresenceCluster:
    """The presence cluster ``settings.presence`` describes, routing on the config's ring
    at version 0 until the stored ring (any version) replaces it when the part seeds; with
    ``kv``, a call that meets a newer ring reloads it from the store and tries again."""
    p = settings.presence
    if p.backend == "redis-cluster":
        from control.presence.cluster_engine import RedisClusterPresence

        engine = RedisClusterPresence(
            p.cluster.seeds, settings.heartbeat.timeout_s, p.key_prefix, p.cluster.buckets
        )
        # The second engine offers every call the parts make of the ring's cluster (one
        # conformance suite holds both to them); no ring to seed, follow or move.
        return cast(PresenceCluster, engine)
    spec = ring_spec(settings, version=0)
    open_shard = open_shard_for(p.backend, settings.heartbeat.timeout_s, p.key_prefix)
    reload = None if kv is None else ring_reader(RingStore(kv, settings.cluster.prefix))
    return PresenceCluster(
        spec,
        {s.id: open_shard(s) for s in spec.shards},
        settings.heartbeat.timeout_s,
        open_shard=open_shard,
        reload=reload,
    )


@dataclass
class Backends:
    """A part's key-value store and presence cluster, and which of them the part opens and
    closes itself (the others are shared, owned by whoever passed them in)."""

    kv: KeyValueStore
    presence: PresenceCluster
    own_kv: bool
    own_presence: bool
    ring: RingWiring | None = None  # seeds and follows the ring of the cluster it owns

    @classmethod
    def of(
        cls,
        settings: Settings,
        kv: KeyValueStore | None = None,
        presence: PresenceCluster | None = None,
    ) -> Backends:
        """The given backends, and new ones (owned) for those not given."""
        store = make_kv(settings.cluster) if kv is None else kv
        b = cls(
            store,
            make_presence(settings, store) if presence is None else presence,
            own_kv=kv is None,
            own_presence=presence is None,
        )
        if b.own_presence and settings.presence.backend != "redis-cluster":
            b.ring = RingWiring(settings, b.kv, b.presence)
        return b

    def attach(self, app: web.Application, *, unreachable_ok: bool = False) -> None:
        """Make ``app`` open the owned store before its component starts and close what it
        owns after the component stops (its first cleanup context: first in, last out).
        ``unreachable_ok``: a store not reachable yet is logged, not fatal (the component
        retries on its own)."""
        if not (self.own_kv or self.own_presence):
            return

        async def backends(app: web.Application) -> AsyncIterator[None]:
            if self.own_kv:
                try:
                    await self.kv.connect()
                except BackendUnavailable as exc:
                    if not unreachable_ok:
                        raise
                    log.warning(
                        "backend not reachable yet (%s); serving static nodes meanwhile", exc
                    )
            if self.ring is not None:
                await self.ring.start(unreachable_ok=unreachable_ok)
            yield
            if self.ring is not None:
                await self.ring.close()
            if self.own_presence:
                await self.presence.close()
            if self.own_kv:
                await self.kv.close()

        app.cleanup_ctx.insert(0, backends)


def scheduler_config(settings: Settings) -> SchedulerConfig:
    return SchedulerConfig(
        cluster=settings.cluster,
        registry=settings.registry,
        scheduler=settings.scheduler,
        heartbeat=settings.heartbeat,
        backoff=settings.backoff,
        tickets=settings.tickets,
        regions=settings.regions,
        gray=settings.gray,
        client_auth=settings.client_auth,
        cors=settings.cors,
        metrics_readers=settings.admin.metrics_readers(),
    )


def admin_config(settings: Settings) -> AdminConfig:
    return AdminConfig(
        cluster=settings.cluster.name,
        prefix=settings.cluster.prefix,
        known_regions=frozenset(settings.regions.known),
        max_event_tails=settings.scheduler.max_event_tails,
        grants=settings.admin.grants(),
    )


def scheduler_app(
    settings: Settings,
    kv: KeyValueStore | None = None,
    presence: PresenceCluster | None = None,
    demo: bool = False,
) -> web.Application:
    """The scheduler with the admin API mounted. ``kv`` and ``presence`` share backends
    already open (in-process clusters); without them it opens and closes its own."""
    b = Backends.of(settings, kv, presence)
    mounts = [admin_routes(admin_config(settings))]
    app = scheduler_create_app(
        scheduler_config(settings),
        b.kv,
        b.presence,
        mounts=mounts,
        demo=demo or settings.scheduler.demo,
    )
    b.attach(app, unreachable_ok=True)  # it serves its static nodes while the store is away
    if b.ring is not None:
        app[RING_FOLLOWER] = b.ring.supervisor
    return app


def ring_of(app: web.Application) -> Supervisor | None:
    """The ring follower's supervisor of an app that owns its presence cluster."""
    return app.get(RING_FOLLOWER)


def scheduler_part(
    settings: Settings,
    kv: KeyValueStore | None = None,
    presence: PresenceCluster | None = None,
    demo: bool = False,
) -> Part:
    app = scheduler_app(settings, kv=kv, presence=presence, demo=demo)
    state = app[STATE]

    def leave() -> None:
        state.leaving = True

    return Part(
        "scheduler",
        app,
        settings.scheduler.host,
        settings.scheduler.port,
        supervisor=state.supervisor,
        leave=leave,
        grace_s=settings.scheduler.shutdown_grace_s,
        unwatch=functools.partial(state.supervisor.close, timeout=3.0),
        ring=ring_of(app),
        tls=settings.scheduler.tls,
    )


def access_part(
    settings: Settings,
    node_id: str,
    kv: KeyValueStore | None = None,
    presence: PresenceCluster | None = None,
) -> Part:
    """One access node; without ``kv`` and ``presence`` it opens and closes its own."""
    b = Backends.of(settings, kv, presence)
    kv, presence = b.kv, b.presence
    cfg = settings.access.node(node_id)
    node_config = NodeConfig(
        node=cfg,
        access=settings.access,
        heartbeat=settings.heartbeat,
        ticket_keys=settings.tickets.ticket_keys(),
        prefix=settings.cluster.prefix,
        registry=settings.registry,
        flush_s=settings.presence.flush_s,
        connections=settings.connections,
        metrics_readers=settings.admin.metrics_readers(),
        releases=settings.gray.releases,
        cors=settings.cors,
    )
    node = AccessNode(node_config, kv, presence)
    app = access_app(node)
    b.attach(app)
    return Part(
        f"access {node_id}",
        app,
        cfg.host,
        cfg.port,
        supervisor=node.supervisor,
        node=node,
        ring=b.ring.supervisor if b.ring else None,
        proxy_port=cfg.proxy_port,
        proxy=proxy_policy(settings) if cfg.proxy_port else None,
        tls=settings.access.tls,
    )


def proxy_policy(settings: Settings) -> ProxyPolicy:
    """Who may relay clients to a node's proxy_port; the header's deadline is the one for a
    request head (connections.idle_timeout_s)."""
    return ProxyPolicy(
        settings.access.balancers,
        settings.connections.idle_timeout_s,
        passthrough=settings.edge.tls != "terminate",
    )


def _controller(settings: Settings, kv: KeyValueStore, presence: PresenceCluster) -> Controller:
    identity = f"{socket.gethostname()}:{os.getpid()}:{settings.controller.port}"
    return Controller(
        kv,
        presence,
        prefix=settings.cluster.prefix,
        identity=identity,
        leader_ttl_s=settings.controller.leader_ttl_s,
        sweep_s=settings.heartbeat.sweep_s,
        reconcile_s=settings.registry.reconcile_s,
        policy=settings.registry.self_preservation.policy(),
        sweep_batch=settings.controller.sweep_batch,
        mover=(
            ring_mover(presence, kv, settings.cluster.prefix, identity)
            if settings.presence.backend != "redis-cluster"
            else None  # Redis Cluster moves its own slots
        ),
    )


def controller_part(
    settings: Settings, kv: KeyValueStore | None = None, presence: PresenceCluster | None = None
) -> Part:
    """The presence controller; without ``kv`` and ``presence`` it opens and closes its own."""
    b = Backends.of(settings, kv, presence)
    controller = _controller(settings, b.kv, b.presence)
    app = controller_app(controller, metrics_readers=settings.admin.metrics_readers())
    b.attach(app)
    attach_stepper(
        app,
        settings,
        b.kv,
        controller.supervisor,
        lambda: controller.election.leader,
        controller.metrics.registry,
    )
    attach_rebalancer(
        app, settings, b.kv, controller.supervisor, lambda: controller.election.leader
    )
    c = settings.controller
    return Part(
        "controller",
        app,
        c.host,
        c.port,
        supervisor=controller.supervisor,
        unwatch=functools.partial(controller.supervisor.close, timeout=3.0),
        ring=b.ring.supervisor if b.ring else None,
    )


async def run_scheduler(settings: Settings) -> int:
    part = scheduler_part(settings)
    log.info("scheduler on %s://%s:%d", part.tls.scheme, part.host, part.port)
    return await _run(Process([part], connections=settings.connections), None, 0)


async def run_access(settings: Settings, node_id: str) -> int:
    part = access_part(settings, node_id)
    return await _run(
        Process([part], connections=settings.connections), None, settings.access.drain_s
    )


async def run_controller(settings: Settings) -> int:
    part = controller_part(settings)
    return await _run(Process([part], connections=settings.connections), None, 0)


async def run_local(
    settings: Settings, as_json: bool = False, config_path: str | None = None
) -> int:
    """The whole cluster in one process: scheduler, every configured access node and the
    controller on one key-value store and one presence cluster."""
    kv = make_kv(settings.cluster)
    presence = make_presence(settings, kv)
    ring = RingWiring(settings, kv, presence)  # one follower for the one cluster
    try:
        await kv.connect()
        await ring.start()
    except BackendUnavailable as exc:
        await ring.close()
        print(f"imctl: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        parts = [access_part(settings, n.id, kv, presence) for n in settings.access.nodes]
        controller = controller_part(settings, kv, presence)
        controller.ring = ring.supervisor
        parts.append(controller)
        scheduler = scheduler_part(settings, kv=kv, presence=presence, demo=True)
        scheduler.grace_s = 0.0  # one local process: no load balancer to wait for
        parts.append(scheduler)
        shown = (
            json.dumps(banner_data(settings)) if as_json else banner(settings, None, config_path)
        )
        return await _run(Process(parts, connections=settings.connections), shown, 0)
    finally:
        await ring.close()
        await presence.close()
        await kv.close()
