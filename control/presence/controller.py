"""The presence controller: leader-elected; expires silent entries and takes a dead node's
users offline as soon as its lease vanishes (not at the heartbeat TTL)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from control.common.election import Election
from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.registry import (
    NodeRecord,
    PreservationPolicy,
    PreservingView,
    Registry,
)
from control.common.tasks import Supervisor, pause
from control.presence.cluster import PresenceCluster

log = logging.getLogger(__name__)


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


class Controller:
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
    ) -> None:
        self.kv = kv
        self.presence = presence
        self.registry = Registry(kv, prefix)
        self.election = Election(
            kv, f"{prefix.rstrip('/')}/controller/leader", identity, leader_ttl_s
        )
        self.sweep_s = sweep_s
        self.reconcile_s = reconcile_s
        self.sweep_batch = sweep_batch
        self.view = PreservingView(policy)
        self.alive: dict[str, NodeRecord] = {}
        self.synced = False
        self.metrics = ControllerMetrics()
        self.supervisor = Supervisor("controller")
        self._dead: asyncio.Queue[str] = asyncio.Queue()

    # -- node deaths ---------------------------------------------------------------------------
    def on_nodes(self, observed: Mapping[str, NodeRecord]) -> None:
        result = self.view.offer(observed)
        gone = [nid for nid in self.alive if nid not in result.nodes]
        self.alive = dict(result.nodes)
        self.synced = True
        for nid in gone:
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

    # -- periodic passes ------------------------------------------------------------------------
    async def sweep_once(self) -> int:
        if not self.election.leader:
            return 0
        expired = len(await self.presence.sweep(self.sweep_batch))
        self.metrics.expired.inc(expired)
        return expired

    async def reconcile_once(self) -> list[str]:
        """Nodes that hold entries but are not alive (died while nobody led): evict them.
        Also refreshes the online-count gauges."""
        counts = await self.presence.counts()
        self.metrics.online.set(counts.total)
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

    async def run_once(self) -> str:
        """One step of everything: election, sweep, reconcile. Returns what it did."""
        try:
            role = await self.election.run_once()
        except BackendUnavailable as exc:
            self.election.unavailable(exc)
            return f"store unavailable: {exc}"
        self.metrics.leader.set(1 if self.election.leader else 0)
        if not self.election.leader:
            return role
        expired = await self.sweep_once()
        orphans = await self.reconcile_once()
        return f"{role}; expired {expired}; orphaned nodes evicted: {orphans or 'none'}"

    async def _elect_forever(self, stop: asyncio.Event) -> None:
        was_leader = False
        while not stop.is_set():
            try:
                await self.election.run_once()
            except BackendUnavailable as exc:
                self.election.unavailable(exc)
            if self.election.leader and not was_leader:
                # A new leader catches up on nodes that died while nobody led.
                for nid in list(self.view.reference(time.monotonic())):
                    if nid not in self.alive:
                        self._dead.put_nowait(nid)
            was_leader = self.election.leader
            self.metrics.leader.set(1 if was_leader else 0)
            await pause(stop, self.election.interval)

    async def _sweep_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.sweep_s)
            try:
                await self.sweep_once()
            except BackendUnavailable as exc:
                log.warning("sweep failed: %s", exc)

    async def _reconcile_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reconcile_once()
            except BackendUnavailable as exc:
                log.warning("reconcile failed: %s", exc)
            await pause(stop, self.reconcile_s)

    async def start(self) -> None:
        mirror = self.registry.mirror(self.on_nodes)
        sup = self.supervisor
        sup.spawn("nodes", mirror.run)
        sup.spawn("election", self._elect_forever)
        sup.spawn("evict", self._evict_forever)
        sup.spawn("sweep", self._sweep_forever)
        sup.spawn("reconcile", self._reconcile_forever)

    async def stop(self) -> None:
        await self.supervisor.close(timeout=3.0)
        await self.election.resign()
