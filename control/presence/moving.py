"""The mover's batch: copy the users whose owner changed out of one shard, then remove
them there, with no events and the source's move epoch odd for the whole batch (the
counts seqlock: ``PresenceCluster.counts`` never sees a user on two shards)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, TypeVar

from control.presence.model import Presence
from control.presence.routing import Routing
from control.presence.store import ShardStore

T = TypeVar("T")


class ShardCalls(Protocol):
    """What a mover batch needs of the cluster (PresenceCluster is one): the rings it
    routes on, one guarded call to a shard, and its clock."""

    clock: Callable[[], float]

    @property
    def routing(self) -> Routing: ...

    async def call(self, sid: str, fn: Callable[[ShardStore], Awaitable[T]]) -> T: ...


class MoveStep(NamedTuple):
    """One mover batch: where the shard's scan goes on, entries looked at, entries moved."""

    cursor: str
    scanned: int
    moved: int
    # Left on the source because the owner holds an offline tombstone for them: their
    # offline is under way there, so a pass that saw any is not clean.
    held: int = 0


async def move_batch(cluster: ShardCalls, shard_id: str, cursor: str, limit: int) -> MoveStep:
    """One mover batch on ``shard_id``: scan, copy each entry whose owner is now another
    shard into it (the owners concurrently), then remove from ``shard_id`` what is still
    exactly the record scanned. The shard's move epoch is odd for the whole batch, so
    ``counts`` never sees a user twice.

    A status set between the scan and the release changed the source's record: the copy
    is stale, so the source keeps its entry and the copy is dropped from the owner (unless
    the owner changed it since: then that one is the newest). Such an entry counts as
    moved, so the pass is not clean and the next one moves it."""
    r = cluster.routing
    v = r.version
    if await cluster.call(shard_id, _bump) % 2 == 0:
        await cluster.call(shard_id, _bump)  # a batch that died mid-way left it odd
    try:
        # Owners looked up once per scanned uid, uncached (a move meets each user once):
        # only the users whose owner changed are read.
        owners: dict[str, str] = {}
        lookup = r.ring.lookup

        def leaves(uid: str) -> bool:
            owner = owners[uid] = lookup(uid)
            return owner != shard_id

        after, found = await cluster.call(shard_id, lambda s: s.scan(cursor, limit, leaves))
        now_ms = int(cluster.clock() * 1000)
        by_owner: dict[str, list[tuple[Presence, int]]] = {}
        for p, deadline in found:
            owner = owners.get(p.uid) or lookup(p.uid)
            if owner != shard_id:
                by_owner.setdefault(owner, []).append((p, deadline))
        targets = list(by_owner)
        copied = await asyncio.gather(
            *(_adopt(cluster, owner, by_owner[owner], now_ms, v) for owner in targets)
        )
        leaving = [p for adopted, newer, _ in copied for p in (*adopted, *newer)]
        held = sum(kept for _, _, kept in copied)
        moved = 0
        if leaving:
            skipped = await cluster.call(
                shard_id, lambda s: s.release_scanned(leaving, ring_version=v)
            )
            moved = len(leaving)
            if skipped:
                await _drop_stale(cluster, targets, [a for a, _, _ in copied], skipped, v)
    finally:
        await cluster.call(shard_id, _bump)
    return MoveStep(after, len(found), moved, held)


async def _drop_stale(
    cluster: ShardCalls,
    owners: list[str],
    adopted: list[list[Presence]],
    skipped: list[Presence],
    v: int,
) -> None:
    """Take the copies whose source changed after the scan back out of their owners
    (each only while it is still exactly the copy)."""
    left = {p.member: p for p in skipped}
    drops = [
        (owner, stale)
        for owner, copies in zip(owners, adopted, strict=True)
        if (stale := [p for p in copies if left.get(p.member) == p])
    ]
    await asyncio.gather(*(_release(cluster, owner, stale, v) for owner, stale in drops))


async def _release(cluster: ShardCalls, sid: str, entries: list[Presence], v: int) -> None:
    await cluster.call(sid, lambda s: s.release_scanned(entries, ring_version=v))


async def _adopt(
    cluster: ShardCalls, owner: str, group: list[tuple[Presence, int]], now_ms: int, v: int
) -> tuple[list[Presence], list[Presence], int]:
    """Copy ``group`` into ``owner``; returns the entries copied, those the owner already
    holds a newer entry of (same device: the source may drop both), and how many stay for
    a tombstone (their offline is under way: the pass is not clean)."""
    adopted = await cluster.call(owner, lambda s: s.adopt(group, now_ms, ring_version=v))
    if len(adopted) == len(group):
        return adopted, [], 0
    taken = {p.member for p in adopted}
    rest = [p for p, deadline in group if p.member not in taken and deadline > now_ms]
    if not rest:
        return adopted, [], 0
    # Skipped: a newer login of the device, or a tombstone. Only the first makes the
    # source copy stale (a tombstoned one is the previous owner's offline to apply).
    there = await cluster.call(owner, lambda s: s.locate([p.uid for p in rest], ring_version=v))
    newer = [p for p in rest if any(q.device == p.device for q in there.get(p.uid, []))]
    return adopted, newer, len(rest) - len(newer)


async def _bump(s: ShardStore) -> int:
    return await s.bump_move_epoch()
