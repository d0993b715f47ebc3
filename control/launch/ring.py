"""The status cluster's ring in every process that routes users: seeded from config at
start (``RingStore.seed``: the store wins once it holds a ring), followed while running
(one :class:`RingFollower` per presence cluster), and the leader controller's mover."""

from __future__ import annotations

import asyncio
import logging
import time

from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.tasks import Supervisor, pause
from control.presence.cluster import PresenceCluster
from control.presence.follower import RingFollower
from control.presence.mover import Mover
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import RingStore
from control.settings import Settings

log = logging.getLogger(__name__)
SEED_RETRY_S = 1.0  # a store not reachable at start: seed again this often


def ring_spec(settings: Settings, version: int = 1) -> RingSpec:
    """The ring the config describes: version 1 is what an empty store is seeded with; a
    process routes on version 0 of it until it has read the stored ring (any version wins
    over 0, even one another config seeded with other shards)."""
    p = settings.presence
    shards = tuple(
        ShardSpec(s.id, s.url if p.backend == "redis" else f"embedded:{s.id}", s.weight)
        for s in p.shards
    )
    return RingSpec(version, shards, vnodes=p.vnodes)


class RingWiring:
    """Seed and follow the ring for one presence cluster, under its own supervisor."""

    def __init__(self, settings: Settings, kv: KeyValueStore, presence: PresenceCluster) -> None:
        self.store = RingStore(kv, settings.cluster.prefix)
        self.seed_spec = ring_spec(settings)
        self.presence = presence
        self.supervisor = Supervisor("ring")
        self.seeded = False

    async def seed(self) -> None:
        """Seed the store from config (when empty) and route on what it holds."""
        spec = await self.store.seed(self.seed_spec)
        self.seeded = True
        await RingFollower(self.store, self.presence).apply(spec)

    async def start(self, *, unreachable_ok: bool = False) -> None:
        """Seed now (an unreachable store: fatal unless ``unreachable_ok``, then seeded
        when it answers), then follow the ring key."""
        try:
            await self.seed()
        except BackendUnavailable as exc:
            if not unreachable_ok:
                raise
            log.warning("presence ring: store not reachable (%s); seeding when it is", exc)
        self.supervisor.spawn("ring-follower", self._follow)

    async def _follow(self, stop: asyncio.Event) -> None:
        while not self.seeded and not stop.is_set():
            try:
                await self.seed()
            except BackendUnavailable:
                await pause(stop, SEED_RETRY_S)
        await RingFollower(self.store, self.presence).run(stop)

    async def close(self) -> None:
        await self.supervisor.close(timeout=3.0)


def ring_mover(presence: PresenceCluster, kv: KeyValueStore, prefix: str, identity: str) -> Mover:
    """The controller's mover: it moves users between the shards of ``presence``."""
    return Mover(presence, RingStore(kv, prefix), identity, time.time)
