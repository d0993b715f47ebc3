"""Where a user's entries are, on a ring that may be mid-resize, and which shards answer.

``Routing`` is the ring a client uses now (and, while migrating, the one before): pure,
rebuilt whenever a new spec is applied. ``Breaker`` is a per-shard circuit breaker: after
``failures`` consecutive unavailable answers the shard is left alone for ``open_s``, then
one trial call decides whether it is back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from control.common.errors import BackendUnavailable
from control.presence.model import ShardUnavailable, StaleRing
from control.presence.ring import Ring, RingSpec, moved_share
from control.presence.store import ShardStore

log = logging.getLogger(__name__)
T = TypeVar("T")

BreakerState = Literal["closed", "open", "half_open"]


class Routing:
    """A ring spec made ready for lookups: the owner now and, while migrating, before."""

    def __init__(self, spec: RingSpec) -> None:
        self.spec = spec
        self.ring = Ring(spec)
        self.previous: Ring | None = None
        if spec.migrating and spec.previous:
            self.previous = Ring(
                RingSpec(spec.version, spec.previous, vnodes=spec.vnodes)  # same placement
            )

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def shard_ids(self) -> list[str]:
        """Every shard a user may be on: the new ones, then the previous ones."""
        ids = [s.id for s in self.spec.shards]
        ids += [s.id for s in self.spec.previous if s.id not in ids]
        return ids

    def before(self, uid: str) -> str | None:
        """The previous owner when it differs from the owner now (the second place to look)."""
        if self.previous is None:
            return None
        old = self.previous.owner(uid)
        return None if old == self.ring.owner(uid) else old

    def moved_fraction(self) -> float:
        return 0.0 if self.previous is None else moved_share(self.previous, self.ring)


@dataclass
class Breaker:
    """One shard's circuit breaker (times from a monotonic clock)."""

    failures: int
    open_s: float
    state: BreakerState = "closed"
    consecutive: int = 0
    opened_at: float = 0.0

    def allow(self, now: float) -> bool:
        """May a call go to the shard now? An open breaker lets one trial through once
        ``open_s`` has passed (half open); others wait for its outcome."""
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.open_s:
            self.state = "half_open"
            return True
        return False

    def succeeded(self) -> None:
        self.state, self.consecutive = "closed", 0

    def failed(self, now: float) -> bool:
        """Count a failure; True when this one opened the breaker."""
        self.consecutive += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.consecutive >= self.failures
        ):
            self.state, self.opened_at = "open", now
            return True
        return False


@dataclass
class ShardStats:
    """Plain counters of one shard, as the cluster saw it."""

    ops: int = 0
    errors: int = 0
    dropped_heartbeats: int = 0
    breaker: BreakerState = "closed"


@dataclass
class ClusterStats:
    """Per-shard counters for metrics (read by whoever exports them)."""

    shards: dict[str, ShardStats] = field(default_factory=dict)

    def of(self, shard: str) -> ShardStats:
        found = self.shards.get(shard)
        if found is None:
            found = self.shards[shard] = ShardStats()
        return found

    def keep(self, shards: Iterable[str]) -> None:
        wanted = set(shards)
        for sid in [s for s in self.shards if s not in wanted]:
            del self.shards[sid]


class ShardGuard:
    """Every shard call goes through here: its breaker, and its counters."""

    def __init__(self, failures: int, open_s: float, monotonic: Callable[[], float]) -> None:
        self.failures, self.open_s, self.monotonic = failures, open_s, monotonic
        self.breakers: dict[str, Breaker] = {}
        self.stats = ClusterStats()

    def breaker(self, sid: str) -> Breaker:
        found = self.breakers.get(sid)
        if found is None:
            found = self.breakers[sid] = Breaker(self.failures, self.open_s)
        return found

    async def call(
        self, sid: str, store: ShardStore, fn: Callable[[ShardStore], Awaitable[T]]
    ) -> T:
        breaker, stats = self.breaker(sid), self.stats.of(sid)
        if not breaker.allow(self.monotonic()):
            raise ShardUnavailable(sid, "circuit open")
        stats.ops += 1
        try:
            result = await fn(store)
        except StaleRing:
            breaker.succeeded()  # it answered
            raise
        except BackendUnavailable as exc:
            stats.errors += 1
            if breaker.failed(self.monotonic()):
                log.warning(
                    "presence shard %s: circuit open for %.1fs (%s)", sid, breaker.open_s, exc
                )
            raise ShardUnavailable(sid, str(exc)) from exc
        breaker.succeeded()
        return result

    def snapshot(self, shards: Iterable[str]) -> ClusterStats:
        for sid in shards:
            self.stats.of(sid).breaker = self.breaker(sid).state
        return self.stats

    def keep(self, shards: Iterable[str]) -> None:
        wanted = set(shards)
        self.stats.keep(wanted)
        for sid in [b for b in self.breakers if b not in wanted]:
            del self.breakers[sid]
