"""The status cluster as one object: route each user to its shard on the ring, batch by
shard, run shards concurrently."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from control.common.errors import BackendUnavailable, BadRequest
from control.presence.model import (
    STATUSES,
    Counts,
    Locations,
    Presence,
    PresenceEvent,
    Status,
    has_separator,
    member,
    split_member,
)
from control.presence.ring import Ring
from control.presence.store import ShardStore

log = logging.getLogger(__name__)
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0  # an unreachable shard's event reads


def _check(**fields: str) -> None:
    for name, value in fields.items():
        if not value or has_separator(value):
            raise BadRequest(name, "must be non-empty and free of control characters")


class PresenceCluster:
    def __init__(
        self,
        ring: Ring,
        shards: Mapping[str, ShardStore],
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        missing = {s.id for s in ring.spec.shards} - set(shards)
        if missing:
            raise ValueError(f"ring names shards with no store: {sorted(missing)}")
        self.ring = ring
        self.shards = dict(shards)
        self.timeout_s = timeout_s
        self.clock = clock

    def _shard(self, uid: str) -> ShardStore:
        return self.shards[self.ring.owner(uid)]

    def _deadline_ms(self, now: float) -> int:
        return int((now + self.timeout_s) * 1000)

    async def online(self, p: Presence) -> Presence | None:
        """Record a login; returns the entry it replaced (same user and device), if any,
        so the caller can kick that older connection wherever it is."""
        _check(uid=p.uid, device=p.device, node=p.node, conn=p.conn)
        for name, value in (("region", p.region), ("platform", p.platform)):
            if has_separator(value):  # may be empty; a separator would corrupt the record
                raise BadRequest(name, "must be free of control characters")
        now = self.clock()
        return await self._shard(p.uid).online(p, self._deadline_ms(now), now)

    async def touch(self, entries: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Heartbeats for many (uid, device, conn): one call per shard, shards concurrently.
        Returns the ones with no entry (gone offline, or lost by a shard restart)."""
        by_shard: dict[str, list[str]] = {}
        owner = self.ring.owner
        for uid, device, conn in entries:
            by_shard.setdefault(owner(uid), []).append(member(uid, device, conn))
        if not by_shard:
            return []
        deadline = self._deadline_ms(self.clock())
        parts = await asyncio.gather(
            *(self.shards[sid].touch(members, deadline) for sid, members in by_shard.items())
        )
        return [split_member(m) for part in parts for m in part]

    async def offline(self, uid: str, device: str, conn: str, reason: str = "closed") -> bool:
        return await self._shard(uid).offline(uid, device, conn, reason, self.clock())

    async def set_status(self, uid: str, device: str, conn: str, status: str) -> bool:
        if status not in STATUSES:
            raise BadRequest("status", f"must be one of {', '.join(STATUSES)}")
        st: Status = status  # type: ignore[assignment]
        return await self._shard(uid).set_status(uid, device, conn, st, self.clock())

    async def locate(self, uids: Sequence[str]) -> Locations:
        """Where these users are connected: one round trip per shard, concurrently."""
        # Not deduplicated here (a push has done it already, and a 10k dedup costs ~0.7 ms):
        # a repeated uid costs its shard a repeated key, and Locations answers it once.
        groups = self.ring.group(uids)
        parts = await asyncio.gather(
            *(self.shards[sid].locate(group) for sid, group in groups.items())
        )
        return parts[0] if len(parts) == 1 else Locations.combine(parts)

    async def who(self, uid: str) -> list[Presence]:
        return await self._shard(uid).who(uid)

    async def counts(self) -> Counts:
        raw = await asyncio.gather(*(s.counters() for s in self.shards.values()))
        return Counts.add(Counts.from_counters(c) for c in raw)

    async def sweep(self, limit: int = 10_000) -> list[Presence]:
        """One expiry pass over every shard: silent entries go offline (with events)."""
        now = self.clock()
        now_ms = int(now * 1000)
        parts = await asyncio.gather(*(s.sweep(now_ms, limit, now) for s in self.shards.values()))
        return [p for part in parts for p in part]

    async def evict_node(self, node: str, batch: int = 1000, max_batches: int = 10_000) -> int:
        """Take every entry of a dead node offline now, in batches per shard."""

        async def drain(shard: ShardStore) -> int:
            total = 0
            for _ in range(max_batches):
                removed = await shard.evict_node(node, batch, self.clock())
                total += removed
                if removed == 0:
                    break
            return total

        return sum(await asyncio.gather(*(drain(s) for s in self.shards.values())))

    async def event_positions(self) -> dict[str, str]:
        """Each shard's newest event: ``events(start=...)`` from here misses nothing that
        happens after this returns (raises BackendUnavailable when a shard is down)."""
        found = await asyncio.gather(*(s.latest_event() for s in self.shards.values()))
        return dict(zip(self.shards, found, strict=True))

    async def events(
        self,
        block_ms: int = 1000,
        start: str | Mapping[str, str] = "$",
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[PresenceEvent]:
        """Online/offline/status changes from every shard, each shard in order, from
        ``start`` (one position for all shards, "$" for now, or one per shard). A shard
        that cannot be reached is retried from where its events stopped, with backoff."""
        if start == "$":  # pin "now" once: "$" on every read would drop events between reads
            positions = await self.event_positions()
        elif isinstance(start, str):
            positions = {sid: start for sid in self.shards}
        else:
            positions = {sid: start.get(sid, "0") for sid in self.shards}
        queue: asyncio.Queue[PresenceEvent] = asyncio.Queue(maxsize=10_000)

        async def follow(sid: str) -> None:
            shard = self.shards[sid]
            backoff = RETRY_FIRST_S
            while stop is None or not stop.is_set():
                try:
                    events = await shard.read_events(positions[sid], 500, block_ms)
                except BackendUnavailable as exc:
                    # Keep the position and try again: the stream is still there after a
                    # blip, and a shard that restarted empty writes newer ids.
                    log.warning("events from shard %s: %s; again in %.1fs", sid, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_S)
                    continue
                backoff = RETRY_FIRST_S
                for event in events:
                    positions[sid] = event.id
                    await queue.put(event)

        tasks = [asyncio.create_task(follow(sid)) for sid in self.shards]
        getter: asyncio.Future[PresenceEvent] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                for t in tasks:
                    if t.done():
                        t.result()  # surfaces a shard failure
                return
        finally:
            # The getter too: the reader cancelled mid-wait leaves it pending otherwise.
            started: list[asyncio.Future[Any]] = [*tasks]
            if getter is not None:
                started.append(getter)
            for f in started:
                f.cancel()
            await asyncio.gather(*started, return_exceptions=True)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards.values()))


def build_cluster(
    shards: Sequence[tuple[str, str, int]],
    backend: str,
    timeout_s: float,
    key_prefix: str,
    vnodes: int = 160,
    **kwargs: Any,
) -> PresenceCluster:
    """A cluster from (id, url, weight) triples on the embedded or Redis backend."""
    from control.presence.ring import RingSpec, ShardSpec
    from control.presence.store import EmbeddedShard

    spec = RingSpec(1, tuple(ShardSpec(i, u, w) for i, u, w in shards), vnodes=vnodes)
    stores: dict[str, ShardStore] = {}
    for sid, url, _w in shards:
        if backend == "redis":
            from control.presence.redis_store import RedisShard

            stores[sid] = RedisShard(sid, url, timeout_s, key_prefix)
        else:
            stores[sid] = EmbeddedShard(sid, timeout_s)
    return PresenceCluster(Ring(spec), stores, timeout_s, **kwargs)
