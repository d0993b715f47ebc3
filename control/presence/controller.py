"""The presence controller: leader-elected; expires silent entries and takes a dead node's
users offline when its loss is final — ``window_s`` after its lease vanished, or at the
end of a self-preservation hold — not at the heartbeat TTL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control.common.election import Election
from control.common.errors import BackendUnavailable, RetryableError
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.registry import (
    NodeRecord,
    PreservationPolicy,
    PreservingView,
    Registry,
)
from control.common.tasks import Supervisor, pause
from control.presence.cluster import PresenceCluster
from control.presence.model import Counts
from control.presence.mover import Mover
from control.presence.ring import RingSpec

log = logging.getLogger(__name__)
BREAKER_STATES = ("closed", "open", "half_open")


class ShardStats(Protocol):
    """One shard's plain counters in the cluster's ``stats`` (ring-core's ClusterStats)."""

    ops: int
    errors: int
    breaker: str
    dropped_heartbeats: int


class RingCollector(Collector):
    """The ring and per-shard figures, read from the cluster when scraped: the cluster
    keeps plain counters (no prometheus in the hot path), this turns them into metrics."""

    def __init__(self, presence: Any) -> None:
        self.presence = presence  # a PresenceCluster; ring-aware ones have spec and stats

    def collect(self) -> Iterator[Metric]:
        spec = getattr(self.presence, "spec", None)
        if isinstance(spec, RingSpec):
            yield GaugeMetricFamily(
                "imctl_presence_ring_version", "Ring version routed on", value=spec.version
            )
            yield GaugeMetricFamily(
                "imctl_presence_ring_migrating", "1 while a resize runs", value=int(spec.migrating)
            )
        stats = getattr(self.presence, "stats", None)
        shards: Mapping[str, ShardStats] = getattr(stats, "shards", None) or {}
        ops = CounterMetricFamily("imctl_presence_shard_ops", "Calls per shard", labels=["shard"])
        errors = CounterMetricFamily(
            "imctl_presence_shard_errors", "Failed calls per shard", labels=["shard"]
        )
        dropped = CounterMetricFamily(
            "imctl_presence_heartbeats_dropped",
            "Heartbeats dropped while their shard's breaker was open",
            labels=["shard"],
        )
        breaker = GaugeMetricFamily(
            "imctl_presence_shard_breaker",
            "1 for the state each shard's circuit breaker is in",
            labels=["shard", "state"],
        )
        for sid, st in sorted(shards.items()):
            ops.add_metric([sid], st.ops)
            errors.add_metric([sid], st.errors)
            dropped.add_metric([sid], st.dropped_heartbeats)
            for state in BREAKER_STATES:
                breaker.add_metric([sid, state], int(st.breaker == state))
        yield from (ops, errors, dropped, breaker)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.leader = Gauge("imctl_controller_leader", "1 on the leader", registry=self.registry)
        self.expired = Counter(
            "imctl_presence_expired_total", "Entries expired by the sweep", registry=self.registry
        )
        self.evicted = Counter(
            "imctl_presence_evicted_total",
            "Entries removed because their node died",
            registry=self.registry,
        )
        self.online = Gauge(
            "imctl_presence_online", "Online entries (user, device)", registry=self.registry
        )
        self.online_by = Gauge(
            "imctl_presence_online_by",
            "Online entries by dimension",
            ["dimension", "value"],
            registry=self.registry,
        )
        self.shard_online = Gauge(
            "imctl_presence_shard_online",
            "Online entries per shard (a user being moved may count on two)",
            ["shard"],
            registry=self.registry,
        )
        self.ring_moved = Counter(
            "imctl_presence_ring_moved", "Users moved by this mover", registry=self.registry
        )
        self.ring_remaining = Gauge(
            "imctl_presence_ring_remaining",
            "Users still to move (estimate)",
            registry=self.registry,
        )
        self.ring_rate = Gauge(
            "imctl_presence_ring_rate", "Users moved per second, recently", registry=self.registry
        )


class Controller:
    """Leader-elected presence housekeeping. Node losses are judged by the same
    :class:`PreservingView` as the scheduler's: a dead node's users are evicted when its
    loss turns final (``window_s`` after it vanished, or at the end of a self-preservation
    hold), by a timer at the view's deadline, not by the heartbeat sweep."""

    def __init__(
        self,
        kv: KeyValueStore,
        presence: PresenceCluster,
        *,
        prefix: str,
        identity: str,
        leader_ttl_s: int,
        sweep_s: float,
        reconcile_s: float,
        policy: PreservationPolicy,
        sweep_batch: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        mover: Mover | None = None,
        mover_idle_s: float = 1.0,
    ) -> None:
        self.kv = kv
        self.presence = presence
        self.registry = Registry(kv, prefix)
        self.election = Election(kv, Keys(prefix).leader, identity, leader_ttl_s)
        self.sweep_s = sweep_s
        self.reconcile_s = reconcile_s
        self.sweep_batch = sweep_batch
        self.view = PreservingView(policy, clock)
        self.synced = False
        self.metrics = ControllerMetrics()
        self.metrics.registry.register(RingCollector(presence))
        # The leader's resize worker (None: the cluster cannot resize); idle between checks.
        self.mover = mover
        self._shards_counted: set[str] = set()  # shards with an online gauge
        self.mover_idle_s = mover_idle_s
        self._mover_counted = 0  # mover.moved_total already in the metric
        self.supervisor = Supervisor("controller")
        self._dead: asyncio.Queue[str] = asyncio.Queue()
        self._rejudge = asyncio.Event()  # the view changed: its deadline may have moved
        self._reconcile_now = asyncio.Event()  # became leader, or first synced

    # -- node deaths ---------------------------------------------------------------------------
    @property
    def alive(self) -> Mapping[str, NodeRecord]:
        """Nodes whose users stay: listed, or lost but not finally (pending or held)."""
        return self.view.known

    def on_nodes(self, observed: Mapping[str, NodeRecord]) -> None:
        self._queue(self.view.offer(observed).final)
        if not self.synced:
            self.synced = True
            self._reconcile_now.set()
        self._rejudge.set()

    def judge_once(self) -> frozenset[str]:
        """Judge the last registry view again now; queue the losses that turned final."""
        if not self.synced:
            return frozenset()
        final = self.view.tick().final
        self._queue(final)
        return final

    def _queue(self, final: frozenset[str]) -> None:
        for nid in sorted(final):
            self._dead.put_nowait(nid)

    async def evict_once(self, node_id: str) -> int:
        if not self.election.leader or node_id in self.alive:
            return 0
        removed = await self.presence.evict_node(node_id)
        self.metrics.evicted.inc(removed)
        if removed:
            log.warning("node %s is gone: %d entries offline", node_id, removed)
        return removed

    async def _evict_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            getter = asyncio.ensure_future(self._dead.get())
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if getter not in done:
                getter.cancel()
                return
            try:
                await self.evict_once(getter.result())
            except BackendUnavailable as exc:
                log.warning(
                    "evicting %s failed (%s); the reconcile pass retries", getter.result(), exc
                )

    async def _judge_forever(self, stop: asyncio.Event) -> None:
        """Wake at the view's deadline (a hold's end, a loss turning final): a quiet
        registry sends no change that would, so without this a held node's users would
        wait for the heartbeat sweep."""
        while not stop.is_set():
            self._rejudge.clear()
            deadline = self.view.deadline()
            if deadline is None:
                await _wake(stop, self._rejudge, self.reconcile_s)
                continue
            # A hair late: asyncio may wake a timer up to its clock resolution early.
            await _wake(stop, self._rejudge, deadline - self.view.clock() + 0.01)
            if self.view.clock() >= deadline:
                self.judge_once()

    # -- periodic passes ------------------------------------------------------------------------
    async def sweep_once(self) -> int:
        if not self.election.leader:
            return 0
        expired = len(await self.presence.sweep(self.sweep_batch))
        self.metrics.expired.inc(expired)
        return expired

    async def reconcile_once(self) -> list[str]:
        """Nodes that hold entries but are not known (died while nobody led, or before this
        controller started): evict them. Also refreshes the online-count gauges."""
        counts = await self.presence.counts()
        self.metrics.online.set(counts.total)
        await self._count_shards()
        self.metrics.online_by.clear()
        for dim in ("region", "node", "platform"):
            for value, n in counts.by(dim).items():
                self.metrics.online_by.labels(dim, value).set(n)
        if not self.election.leader or not self.synced:
            return []
        orphans = [n for n in counts.by_node if n not in self.alive]
        for node_id in orphans:
            await self.evict_once(node_id)
        return orphans

    async def _count_shards(self) -> None:
        """Per-shard online gauges; a shard that cannot answer keeps its last figure."""
        shards = self.presence.shards
        found = await asyncio.gather(
            *(s.counters() for s in shards.values()), return_exceptions=True
        )
        for sid, counters in zip(shards, found, strict=True):
            if isinstance(counters, BaseException):
                if not isinstance(counters, RetryableError):
                    raise counters
                continue
            self.metrics.shard_online.labels(sid).set(Counts.from_counters(counters).total)
        for gone in self._shards_counted - set(shards):  # a shard that left the ring
            self.metrics.shard_online.remove(gone)
        self._shards_counted = set(shards)

    # -- the ring mover --------------------------------------------------------------------------
    async def move_once(self) -> str:
        """One mover step while leader (a follower forgets its place: the leader resumes
        from the stored progress)."""
        mover = self.mover
        if mover is None:
            return "no mover"
        if not self.election.leader:
            mover.step_down()
            return "not the leader: not moving"
        said = await mover.run_once()
        self.metrics.ring_moved.inc(mover.moved_total - self._mover_counted)
        self._mover_counted = mover.moved_total
        progress = mover.progress
        moving = progress is not None and progress.state != "stable"
        self.metrics.ring_remaining.set(progress.remaining if moving and progress else 0)
        self.metrics.ring_rate.set(progress.rate_per_s if moving and progress else 0)
        return said

    async def _move_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                said = await self.move_once()
            except RetryableError as exc:  # a shard or the store away: the next step retries
                log.warning("ring mover: %s", exc)
                said = ""
            if self.mover is None or not self.mover.moving or not said:
                await pause(stop, self.mover_idle_s)

    async def run_once(self) -> str:
        """One step of everything: election, judging, sweep, reconcile. Returns what it did."""
        try:
            role = await self.election.run_once()
        except BackendUnavailable as exc:
            self.election.unavailable(exc)
            return f"store unavailable: {exc}"
        self.metrics.leader.set(1 if self.election.leader else 0)
        self.judge_once()
        if not self.election.leader:
            return role
        evicted = 0
        while not self._dead.empty():
            evicted += await self.evict_once(self._dead.get_nowait())
        expired = await self.sweep_once()
        orphans = await self.reconcile_once()
        said = (
            f"{role}; evicted {evicted}; expired {expired}; "
            f"orphaned nodes evicted: {orphans or 'none'}"
        )
        return said if self.mover is None else f"{said}; ring: {await self.move_once()}"

    async def _elect_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            was_leader = self.election.leader
            try:
                await self.election.run_once()
                delay = self.election.interval
            except BackendUnavailable as exc:
                self.election.unavailable(exc)
                delay = self.election.retry_s
            if self.election.leader and not was_leader:
                # A new leader catches up at once on nodes that died while nobody led.
                self._reconcile_now.set()
            self.metrics.leader.set(1 if self.election.leader else 0)
            await pause(stop, delay)

    async def _sweep_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.sweep_s)
            try:
                await self.sweep_once()
            except BackendUnavailable as exc:
                log.warning("sweep failed: %s", exc)

    async def _reconcile_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._reconcile_now.clear()
            try:
                await self.reconcile_once()
            except BackendUnavailable as exc:
                log.warning("reconcile failed: %s", exc)
            await _wake(stop, self._reconcile_now, self.reconcile_s)

    async def start(self) -> None:
        mirror = self.registry.mirror(self.on_nodes)
        sup = self.supervisor
        sup.spawn("nodes", mirror.run)
        sup.spawn("election", self._elect_forever)
        sup.spawn("judge", self._judge_forever)
        sup.spawn("evict", self._evict_forever)
        sup.spawn("sweep", self._sweep_forever)
        sup.spawn("reconcile", self._reconcile_forever)
        if self.mover is not None:
            sup.spawn("ring-mover", self._move_forever)

    async def stop(self) -> None:
        await self.supervisor.close(timeout=3.0)
        await self.election.resign()


async def _wake(stop: asyncio.Event, event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``event`` or ``stop`` is set."""
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(event.wait())}
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
