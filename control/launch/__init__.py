"""Running processes: one component each (scheduler, access node, controller), or the whole
local cluster in one process on shared backends (``imctl up``).

The one place that turns Settings into components: it picks the embedded or real backends,
owns them (one cleanup context per process part, or the shared pair of ``imctl up``), and
builds each component's own config (the scheduler and the admin API never see Settings)."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from control.access.app import create_app as access_app
from control.access.config import NodeConfig
from control.access.node import AccessNode
from control.admin.config import AdminConfig
from control.admin.routes import mount as admin_routes
from control.common.config import ClusterSettings
from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.proxied import ProxyPolicy
from control.common.tasks import Supervisor
from control.launch.banner import banner as banner
from control.launch.banner import banner_data as banner_data
from control.launch.banner import imctl_command as imctl_command
from control.launch.gray import attach_stepper
from control.launch.process import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from control.launch.process import Part as Part
from control.launch.process import Process as Process
from control.launch.process import run_process
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
RING_FOLLOWER = web.AppKey("ring_follower", Supervisor)


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
    return await run_process(Process([part], connections=settings.connections), None, 0)


async def run_access(settings: Settings, node_id: str) -> int:
    part = access_part(settings, node_id)
    return await run_process(
        Process([part], connections=settings.connections), None, settings.access.drain_s
    )


async def run_controller(settings: Settings) -> int:
    part = controller_part(settings)
    return await run_process(Process([part], connections=settings.connections), None, 0)


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
        return await run_process(Process(parts, connections=settings.connections), shown, 0)
    finally:
        await ring.close()
        await presence.close()
        await kv.close()
