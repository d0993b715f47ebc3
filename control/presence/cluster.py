"""The status cluster as one object: route each user to its shard on the ring, batch by
shard, run shards concurrently; follow ring changes and move users while one migrates.

While the ring migrates (``spec.previous`` set), a user whose owner changed may still be
on the previous owner: writes go to the new owner, reads go to both (the new owner's entry
wins for a device), offline and status reach both, and a login removes the device's entry
from the previous owner. Every shard call carries the ring version; a shard serving a
newer one refuses it (``StaleRing``) and the call is retried on the reloaded ring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from control.common.errors import BadRequest
from control.presence.events import follow_events
from control.presence.model import (
    SEP,
    STATUSES,
    Counts,
    Locations,
    Presence,
    PresenceEvent,
    ShardUnavailable,
    StaleRing,
    Status,
    has_separator,
    member,
    split_member,
)
from control.presence.moving import MoveStep, move_batch
from control.presence.ring import Ring, RingSpec, ShardSpec
from control.presence.routing import ClusterStats, Routing, ShardGuard
from control.presence.store import ShardStore

log = logging.getLogger(__name__)
T = TypeVar("T")
STALE_RETRIES = 3  # reload-and-retry rounds after a StaleRing before giving up
# counts() while migrating: a mover batch holds a shard's epoch odd for a few ms.
COUNTS_TRIES, COUNTS_PAUSE_S = 50, 0.01


def _check(**fields: str) -> None:
    for name, value in fields.items():
        if not value or has_separator(value):
            raise BadRequest(name, "must be non-empty and free of control characters")


class PresenceCluster:
    def __init__(
        self,
        spec: RingSpec,
        shards: Mapping[str, ShardStore],
        timeout_s: float,
        clock: Callable[[], float] = time.time,
        *,
        open_shard: Callable[[ShardSpec], ShardStore] | None = None,
        reload: Callable[[], Awaitable[RingSpec | None]] | None = None,
        breaker_failures: int = 3,
        breaker_open_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        routing = Routing(spec)
        self.shards: dict[str, ShardStore] = dict(shards)
        self.open_shard = open_shard
        self._open_missing(routing)
        self._routing = routing
        self.timeout_s = timeout_s
        self.clock = clock
        self.reload = reload
        self._guard = ShardGuard(breaker_failures, breaker_open_s, monotonic)
        self._apply_lock = asyncio.Lock()
        self._changed = asyncio.Event()  # set and replaced when the set of shards changes
        self._counts_warned = False

    # The ring -------------------------------------------------------------------------

    @property
    def spec(self) -> RingSpec:
        return self._routing.spec

    @property
    def ring(self) -> Ring:
        return self._routing.ring

    @property
    def previous(self) -> Ring | None:
        return self._routing.previous

    def _open_missing(self, routing: Routing) -> None:
        by_id = {s.id: s for s in (*routing.spec.shards, *routing.spec.previous)}
        missing = [sid for sid in routing.shard_ids if sid not in self.shards]
        if missing and self.open_shard is None:
            raise ValueError(f"ring names shards with no store: {sorted(missing)}")
        for sid in missing:
            assert self.open_shard is not None
            self.shards[sid] = self.open_shard(by_id[sid])

    async def apply_ring(self, spec: RingSpec) -> bool:
        """Route by ``spec`` from now on when it is newer (or the same version, finished):
        stores are opened for new shards, and closed once the ring is stable without them."""
        async with self._apply_lock:
            now = self.spec
            finished = spec.version == now.version and now.migrating and not spec.migrating
            if spec.version < now.version or (spec.version == now.version and not finished):
                return False
            before = set(self.shards)
            routing = Routing(spec)
            self._open_missing(routing)
            self._routing = routing
            keep = set(routing.shard_ids)
            gone = [self.shards.pop(sid) for sid in list(self.shards) if sid not in keep]
            self._guard.keep(keep)
            if set(self.shards) != before:
                self._changed.set()
                self._changed = asyncio.Event()
            log.warning(
                "presence ring: version %d (%s) over %s",
                spec.version,
                spec.state,
                ", ".join(routing.shard_ids),
            )
        await asyncio.gather(*(s.close() for s in gone), return_exceptions=True)
        return True

    async def _catch_up(self, served: int) -> bool:
        """After a StaleRing: reload the ring; True when it now is at least ``served``."""
        if self._routing.version < served and self.reload is not None:
            spec = await self.reload()
            if spec is not None:
                await self.apply_ring(spec)
        return self._routing.version >= served

    async def _fenced(self, op: Callable[[Routing], Awaitable[T]]) -> T:
        for attempt in range(STALE_RETRIES + 1):
            try:
                return await op(self._routing)
            except StaleRing as exc:
                if attempt == STALE_RETRIES or not await self._catch_up(exc.served):
                    raise
        raise AssertionError("unreachable")

    # Shards behind their breakers -------------------------------------------------------

    async def call(self, sid: str, fn: Callable[[ShardStore], Awaitable[T]]) -> T:
        """One call to a shard; ShardUnavailable when it fails or its breaker is open."""
        store = self.shards.get(sid)
        if store is None:  # it left the ring after this call's routing was read: retry
            raise StaleRing(self._routing.version)
        return await self._guard.call(sid, store, fn)

    @property
    def routing(self) -> Routing:
        """The rings calls are routed on now (current, and previous while migrating)."""
        return self._routing

    @property
    def stats(self) -> ClusterStats:
        return self._guard.snapshot(self._routing.shard_ids)

    # The public API ---------------------------------------------------------------------

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
        deadline = self._deadline_ms(now)

        # A retry after StaleRing must not write the login twice where it landed already
        # (it would replace itself): what each shard answered is kept across attempts.
        landed: dict[str, Presence | None] = {}

        async def op(r: Routing) -> Presence | None:
            v, new = r.version, r.ring.owner(p.uid)
            old = r.before(p.uid)
            if new not in landed and old is not None and old in landed:
                # An earlier attempt wrote it on what is now the previous owner (the ring
                # moved on meanwhile): it stays there for the mover, as an older login would;
                # writing it again on the new owner would make it replace itself.
                return landed[old]
            if new not in landed:
                landed[new] = await self.call(
                    new, lambda s: s.online(p, deadline, now, ring_version=v)
                )
            replaced = landed[new]
            if old is None:
                return replaced
            try:
                if replaced is None:  # the device's entry, if any, is on the previous owner
                    out = await self.call(
                        old, lambda s: s.replace_out(p.uid, p.device, now, ring_version=v)
                    )
                    if out is not None:
                        # A mover batch may have scanned it before it went: a tombstone on
                        # the new owner keeps that copy from landing after this login ends.
                        gone_conn = out.conn
                        await self.call(
                            new,
                            lambda s: s.offline(
                                p.uid,
                                p.device,
                                gone_conn,
                                "replaced",
                                now,
                                ring_version=v,
                                tombstone=True,
                            ),
                        )
                    return out
                # The new owner had it (the mover copied it): drop the source copy quietly,
                # its offline event was just written.
                gone = replaced
                await self.call(old, lambda s: s.release([gone], ring_version=v))
            except ShardUnavailable as exc:  # the mover removes the older entry later
                log.warning("login of %s: previous owner skipped (%s)", p.uid, exc)
            return replaced

        return await self._fenced(op)

    async def touch(self, entries: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Heartbeats for many (uid, device, conn): one call per shard, shards concurrently.
        Returns the ones with no entry (gone offline, or lost by a shard restart). A shard
        that is down drops its heartbeats (counted): its users are not reported missing."""
        batch = list(entries)
        if not batch:
            return []
        deadline = self._deadline_ms(self.clock())

        async def touch_all(r: Routing, groups: dict[str, list[str]]) -> list[str]:
            parts = await asyncio.gather(
                *(self._touch_shard(sid, ms, deadline, r.version) for sid, ms in groups.items())
            )
            return [m for part in parts for m in part]

        async def op(r: Routing) -> list[tuple[str, str, str]]:
            groups: dict[str, list[str]] = {}
            owner, before = r.ring.owner, r.before
            # A moved user: previous owner first, then the new one (as in locate).
            for uid, device, conn in batch:
                first = before(uid) or owner(uid)
                groups.setdefault(first, []).append(member(uid, device, conn))
            missing = await touch_all(r, groups)
            if r.previous is not None and missing:
                second: dict[str, list[str]] = {}
                stays = []
                for m in missing:
                    uid = m.split(SEP, 1)[0]
                    if before(uid) is None:
                        stays.append(m)
                    else:
                        second.setdefault(owner(uid), []).append(m)
                missing = stays + await touch_all(r, second)
            return [split_member(m) for m in missing]

        return await self._fenced(op)

    async def _touch_shard(
        self, sid: str, members: list[str], deadline: int, version: int
    ) -> list[str]:
        try:
            return await self.call(sid, lambda s: s.touch(members, deadline, ring_version=version))
        except ShardUnavailable:
            # Nothing is done to the connections: they are asserted again when it is back.
            self._guard.stats.of(sid).dropped_heartbeats += len(members)
            return []

    async def offline(self, uid: str, device: str, conn: str, reason: str = "closed") -> bool:
        now = self.clock()

        landed: dict[str, bool] = {}  # as in online: a retry does not offline twice

        async def op(r: Routing) -> bool:
            v, old, new = r.version, r.before(uid), r.ring.owner(uid)
            if not landed.get(new):
                landed[new] = await self.call(
                    new,
                    lambda s: s.offline(
                        uid, device, conn, reason, now, ring_version=v, tombstone=old is not None
                    ),
                )
            removed = landed[new]
            # An attempt before a StaleRing may have removed it on a shard that the
            # reloaded ring no longer names as the owner: that removal is the answer.
            earlier = any(landed.values())
            if old is None:
                return earlier
            if removed:  # the new owner had the mover's copy: the source goes quietly
                gone = Presence(uid, device, "", conn)
                await self.call(old, lambda s: s.release([gone], ring_version=v))
                return True
            return (
                await self.call(
                    old, lambda s: s.offline(uid, device, conn, reason, now, ring_version=v)
                )
                or earlier
            )

        return await self._fenced(op)

    async def set_status(self, uid: str, device: str, conn: str, status: str) -> bool:
        if status not in STATUSES:
            raise BadRequest("status", f"must be one of {', '.join(STATUSES)}")
        st: Status = status  # type: ignore[assignment]
        now = self.clock()

        async def op(r: Routing) -> bool:
            v, old = r.version, r.before(uid)
            new = r.ring.owner(uid)
            if await self.call(
                new, lambda s: s.set_status(uid, device, conn, st, now, ring_version=v)
            ):
                return True
            if old is None:
                return False
            return await self.call(
                old, lambda s: s.set_status(uid, device, conn, st, now, ring_version=v)
            )

        return await self._fenced(op)

    async def locate(self, uids: Sequence[str]) -> Locations:
        """Where these users are connected: one round trip per shard, concurrently. Users
        whose shard cannot be read come back in ``unknown`` (not as offline)."""
        # Not deduplicated here (a push has done it already, and a 10k dedup costs ~0.7 ms):
        # a repeated uid costs its shard a repeated key, and Locations answers it once.

        async def read(r: Routing, groups: dict[str, list[str]]) -> Locations:
            parts = await asyncio.gather(
                *(self._locate_shard(sid, group, r.version) for sid, group in groups.items())
            )
            return parts[0] if len(parts) == 1 else Locations.combine(parts)

        async def op(r: Routing) -> Locations:
            if r.previous is None:
                return await read(r, r.ring.group(uids))
            earlier: dict[str, list[str]] = {}
            for uid in uids:
                old = r.before(uid)
                if old is not None:
                    earlier.setdefault(old, []).append(uid)
            # Previous owners first: a move copies into the new owner before deleting from
            # the old, so a user moved between the two reads is seen (not so new-then-old).
            older = await read(r, earlier) if earlier else None
            found = await read(r, r.ring.group(uids))
            return found if older is None else Locations.overlay(found, older)

        return await self._fenced(op)

    async def _locate_shard(self, sid: str, uids: list[str], version: int) -> Locations:
        try:
            return await self.call(sid, lambda s: s.locate(uids, ring_version=version))
        except ShardUnavailable:
            return Locations(unknown=uids)

    async def who(self, uid: str) -> list[Presence]:
        """Every entry of one user; ShardUnavailable when a shard it may be on is down."""

        async def op(r: Routing) -> list[Presence]:
            v, old = r.version, r.before(uid)
            more: list[Presence] = []
            if old is not None:  # previous owner first (as in locate: no user missed)
                more = await self.call(old, lambda s: s.who(uid, ring_version=v))
            entries = await self.call(r.ring.owner(uid), lambda s: s.who(uid, ring_version=v))
            devices = {p.device for p in entries}
            return entries + [p for p in more if p.device not in devices]

        return await self._fenced(op)

    async def counts(self) -> Counts:
        """Exact counts. While migrating, a user in the middle of a move is on two shards:
        the shards' move epochs are read before and after the counters, and the reading is
        taken only when no batch was in flight (a seqlock; bounded retries)."""
        ids = list(self.shards)

        async def counters() -> list[dict[str, int]]:
            return list(await asyncio.gather(*(self.call(s, _counters) for s in ids)))

        if not self.spec.migrating:
            return _sum(await counters())
        raw: list[dict[str, int]] = []
        for _ in range(COUNTS_TRIES):
            before = await asyncio.gather(*(self.call(s, _move_epoch) for s in ids))
            raw = await counters()
            after = await asyncio.gather(*(self.call(s, _move_epoch) for s in ids))
            if before == after and all(e % 2 == 0 for e in after):
                return _sum(raw)
            await asyncio.sleep(COUNTS_PAUSE_S)
        if not self._counts_warned:
            self._counts_warned = True
            log.warning("presence counts: a move batch never settled; answering approximately")
        return _sum(raw)

    async def sweep(self, limit: int = 10_000) -> list[Presence]:
        """One expiry pass over every shard: silent entries go offline (with events)."""
        now = self.clock()
        now_ms = int(now * 1000)
        parts = await asyncio.gather(
            *(self.call(sid, lambda s: s.sweep(now_ms, limit, now)) for sid in list(self.shards))
        )
        return [p for part in parts for p in part]

    async def evict_node(self, node: str, batch: int = 1000, max_batches: int = 10_000) -> int:
        """Take every entry of a dead node offline now, in batches per shard."""

        async def drain(sid: str) -> int:
            total = 0
            for _ in range(max_batches):
                removed = await self.call(sid, lambda s: s.evict_node(node, batch, self.clock()))
                total += removed
                if removed == 0:
                    break
            return total

        return sum(await asyncio.gather(*(drain(sid) for sid in list(self.shards))))

    async def event_positions(self) -> dict[str, str]:
        """Each shard's newest event: ``events(start=...)`` from here misses nothing that
        happens after this returns (raises BackendUnavailable when a shard is down)."""
        ids = list(self.shards)
        found = await asyncio.gather(*(self.shards[sid].latest_event() for sid in ids))
        return dict(zip(ids, found, strict=True))

    def events(
        self,
        block_ms: int = 1000,
        start: str | Mapping[str, str] = "$",
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[PresenceEvent]:
        """Online/offline/status changes from every shard, each shard in order, from
        ``start`` (one position for all shards, "$" for now, or one per shard). A shard
        that cannot be reached is retried from where its events stopped, with backoff; a
        shard a ring change adds is followed from its first event, one it drops is left."""
        return follow_events(self, block_ms, start, stop)

    def shards_changed(self) -> asyncio.Event:
        """Set when the set of shards changes next (``events`` waits on it)."""
        return self._changed

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards.values()))

    # The mover's part -------------------------------------------------------------------

    def moved_fraction(self) -> float:
        """The share of the hash space whose owner differs between the previous shards and
        the current ones: the share of users the migration should move."""
        return self._routing.moved_fraction()

    async def fence_all(self) -> None:
        """Make every shard, new and previous, serve this ring's version: a client still on
        an older ring is refused wherever it writes."""
        v = self._routing.version
        await asyncio.gather(
            *(self.call(sid, lambda s: s.fence(v)) for sid in self._routing.shard_ids)
        )

    async def move_step(self, shard_id: str, cursor: str, limit: int) -> MoveStep:
        """One mover batch on ``shard_id`` (see ``presence/moving.py``)."""
        return await move_batch(self, shard_id, cursor, limit)


async def _counters(s: ShardStore) -> dict[str, int]:
    return await s.counters()


async def _move_epoch(s: ShardStore) -> int:
    return await s.move_epoch()


def _sum(raw: Iterable[Mapping[str, int]]) -> Counts:
    return Counts.add(Counts.from_counters(c) for c in raw)
