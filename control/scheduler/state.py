"""The scheduler app's shared state: app keys, process state and metrics (the admin API,
mounted into the same app, reads them too)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from control.common.client_auth import ClientAuth
from control.common.kv import KeyValueStore
from control.common.metrics import LoopCounter, LoopHistogram
from control.common.registry import NodeRecord
from control.common.tasks import Supervisor
from control.presence.cluster import PresenceCluster
from control.scheduler.config import SchedulerConfig
from control.scheduler.engine import Engine

disable_created_metrics()  # the _created series only add noise to dashboards

ENGINE = web.AppKey("engine", Engine)
CONFIG = web.AppKey("config", SchedulerConfig)


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
        # The refusals alerts watch, from 0 (see LoopCounter.zero).
        for refusal in ("rate_limited", "no_capacity"):
            self.decisions.zero("none", "none", refusal)
        self.assignments = LoopCounter(
            "imctl_scheduler_assignments_total",
            "Clients assigned, by the release that took them (none: no release) and the "
            "track they landed on (canary, or stable: no release or a full canary)",
            ["release", "track"],
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
        self.built_at = Gauge(
            "imctl_scheduler_snapshot_timestamp_seconds",
            "When the serving snapshot was built (its age: time() minus this)",
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
        self.auth = LoopCounter(
            "imctl_scheduler_client_auth_total",
            "Client credentials on GET /v1/endpoint by result: cached (a reconnect's token "
            "seen before), verified, or why it was refused",
            ["result"],
            self.registry,
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
        self.built_at.set_to_current_time()


class SchedulerState:
    """Process-level state: the supervisor, the backend's name, shutdown flags."""

    def __init__(self) -> None:
        self.supervisor = Supervisor("scheduler")
        self.backend = "none"
        self.stopping = asyncio.Event()  # set at shutdown: open event tails end
        self.tails = 0  # open GET /v1/presence/events
        self.leaving = False  # SIGTERM seen: /readyz says 503 through the shutdown grace


METRICS = web.AppKey("metrics", SchedulerMetrics)
STATE = web.AppKey("state", SchedulerState)


PRESENCE = web.AppKey("presence", PresenceCluster)
AUTH = web.AppKey("client_auth", ClientAuth)
KV = web.AppKey("kv", KeyValueStore)
