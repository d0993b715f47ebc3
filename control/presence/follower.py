"""Every process that routes users follows the ring spec at ``<prefix>/presence/ring``: a
mirror of that one key hands each new spec to ``cluster.apply_ring`` (newer versions only;
the cluster opens the stores of new shards). A change missed here is still caught: a shard
fenced to a newer version refuses this process's next call, and the cluster reloads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from control.common.errors import ImctlError
from control.presence.ring import RingSpec
from control.presence.ringstore import RING, RingStore

log = logging.getLogger(__name__)


class RingRouted(Protocol):
    """What the follower needs of the status cluster (``PresenceCluster``)."""

    @property
    def spec(self) -> RingSpec: ...
    async def apply_ring(self, spec: RingSpec) -> bool: ...


def ring_reader(store: RingStore) -> Callable[[], Awaitable[RingSpec | None]]:
    """The cluster's ``reload``: the stored ring now (None when none is readable)."""

    async def reload() -> RingSpec | None:
        stored = await store.ring()
        return None if stored is None else stored.record

    return reload


class RingFollower:
    def __init__(self, store: RingStore, cluster: RingRouted, verify_s: float = 10.0) -> None:
        self.store = store
        self.cluster = cluster
        self.verify_s = verify_s
        self.applied = 0  # ring changes applied (a test's and the logs' account)
        self._pending: RingSpec | None = None
        self._wake = asyncio.Event()

    async def apply(self, spec: RingSpec) -> str:
        """Route on ``spec`` when it is newer than what the cluster has; says what it did."""
        before = self.cluster.spec
        if not await self.cluster.apply_ring(spec):
            return f"ring version {before.version} ({before.state}) kept"
        self.applied += 1
        log.warning(
            "presence ring: now version %d (%s: shards %s%s)",
            spec.version,
            spec.state,
            ",".join(s.id for s in spec.shards),
            f"; before {','.join(s.id for s in spec.previous)}" if spec.migrating else "",
        )
        return f"ring version {spec.version} ({spec.state}) applied"

    async def run_once(self) -> str:
        """Read the ring key and apply it."""
        spec = await ring_reader(self.store)()
        if spec is None:
            return "no readable ring spec"
        return await self.apply(spec)

    def _on_change(self, items: Mapping[str, RingSpec]) -> None:
        spec = items.get(RING)
        if spec is not None:
            self._pending = spec
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the ring key until ``stop`` (a store outage is retried by the mirror)."""
        mirror = self.store.rings.mirror(self._on_change, verify_s=self.verify_s, only=RING)
        watching = asyncio.create_task(mirror.run(stop), name="ring-follower:watch")
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                woke = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({woke, stopped, watching}, return_when=asyncio.FIRST_COMPLETED)
                woke.cancel()
                if watching.done():
                    watching.result()  # surfaces why the mirror died
                    return
                self._wake.clear()
                spec, self._pending = self._pending, None
                if spec is not None:
                    try:
                        await self.apply(spec)
                    except ImctlError as exc:  # a new shard unreachable: the mirror re-sends
                        log.warning("presence ring: cannot apply version %d: %s", spec.version, exc)
                        self._pending = self._pending or spec
                        await asyncio.wait({stopped}, timeout=1.0)
                        self._wake.set()
        finally:
            stopped.cancel()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
