"""The status cluster's ring in every process that routes users: seeded from config at
start (``RingStore.seed``: the store wins once it holds a ring), followed while running
(one :class:`RingFollower` per presence cluster), and the leader controller's mover.

TODO(merge, issue 14): ring-core's ring-aware PresenceCluster makes the isinstance checks
below always true; drop them then, and build the cluster in ``make_presence`` with
``open_shard=open_shard_for(backend, timeout_s, key_prefix)`` and
``reload=ring_reader(RingStore(kv, prefix))``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol, runtime_checkable

from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.tasks import Supervisor, pause
from control.presence.follower import RingFollower
from control.presence.mover import Mover, MovingCluster
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import RingStore
from control.settings import Settings

log = logging.getLogger(__name__)
SEED_RETRY_S = 1.0  # a store not reachable at start: seed again this often


@runtime_checkable
class RingAware(MovingCluster, Protocol):
    """A presence cluster that routes on a live ring (ring-core's PresenceCluster)."""


def ring_spec(settings: Settings) -> RingSpec:
    """The ring the config describes: version 1, what an empty store is seeded with."""
    p = settings.presence
    shards = tuple(
        ShardSpec(s.id, s.url if p.backend == "redis" else f"embedded:{s.id}", s.weight)
        for s in p.shards
    )
    return RingSpec(1, shards, vnodes=p.vnodes)


class RingWiring:
    """Seed and follow the ring for one presence cluster, under its own supervisor."""

    def __init__(self, settings: Settings, kv: KeyValueStore, presence: object) -> None:
        self.store = RingStore(kv, settings.cluster.prefix)
        self.seed_spec = ring_spec(settings)
        self.presence = presence
        self.supervisor = Supervisor("ring")
        self.seeded = False

    async def seed(self) -> None:
        """Seed the store from config (when empty) and route on what it holds."""
        spec = await self.store.seed(self.seed_spec)
        self.seeded = True
        if isinstance(self.presence, RingAware):
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
        if isinstance(self.presence, RingAware):
            await RingFollower(self.store, self.presence).run(stop)
        else:  # a cluster on a fixed ring: nothing to follow
            await stop.wait()

    async def close(self) -> None:
        await self.supervisor.close(timeout=3.0)


def ring_mover(presence: object, kv: KeyValueStore, prefix: str, identity: str) -> Mover | None:
    """The controller's mover, when the cluster can move users between shards."""
    if not isinstance(presence, RingAware):
        return None
    return Mover(presence, RingStore(kv, prefix), identity, time.time)
