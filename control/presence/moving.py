"""The mover's batch: copy the users whose owner changed out of one shard, then remove
them there, with no events and the source's move epoch odd for the whole batch (the
counts seqlock: ``PresenceCluster.counts`` never sees a user on two shards)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from control.presence.model import Presence
from control.presence.store import ShardStore

if TYPE_CHECKING:
    from control.presence.cluster import PresenceCluster


class MoveStep(NamedTuple):
    """One mover batch: where the shard's scan goes on, entries looked at, entries moved."""

    cursor: str
    scanned: int
    moved: int
    # Left on the source because the owner holds an offline tombstone for them: their
    # offline is under way there, so a pass that saw any is not clean.
    held: int = 0


async def move_batch(cluster: PresenceCluster, shard_id: str, cursor: str, limit: int) -> MoveStep:
    """One mover batch on ``shard_id``: scan, copy each entry whose owner is now another
    shard into it, then remove what was copied from ``shard_id``. The shard's move
    epoch is odd for the whole batch, so ``counts`` never sees a user twice."""
    r = cluster._routing
    v = r.version
    if await cluster._call(shard_id, _bump) % 2 == 0:
        await cluster._call(shard_id, _bump)  # a batch that died mid-way left it odd
    try:
        after, found = await cluster._call(shard_id, lambda s: s.scan(cursor, limit))
        now_ms = int(cluster.clock() * 1000)
        by_owner: dict[str, list[tuple[Presence, int]]] = {}
        for p, deadline in found:
            owner = r.ring.owner(p.uid)
            if owner != shard_id:
                by_owner.setdefault(owner, []).append((p, deadline))
        leaving: list[Presence] = []
        held = 0
        for owner, group in by_owner.items():
            gone, kept = await _adopt(cluster, owner, group, now_ms, v)
            leaving += gone
            held += kept
        moved = 0
        if leaving:
            moved = await cluster._call(shard_id, lambda s: s.release(leaving, ring_version=v))
    finally:
        await cluster._call(shard_id, _bump)
    return MoveStep(after, len(found), moved, held)


async def _adopt(
    cluster: PresenceCluster, owner: str, group: list[tuple[Presence, int]], now_ms: int, v: int
) -> tuple[list[Presence], int]:
    """Copy ``group`` into ``owner``; returns the entries the source may drop (those
    copied, and those the owner already holds a newer entry of: same device), and how
    many stay for a tombstone (their offline is under way)."""
    adopted = await cluster._call(owner, lambda s: s.adopt(group, now_ms, ring_version=v))
    taken = {p.member for p in adopted}
    rest = [p for p, deadline in group if p.member not in taken and deadline > now_ms]
    if not rest:
        return adopted, 0
    # Skipped: a newer login of the device, or a tombstone. Only the first makes the
    # source copy stale (a tombstoned one is the previous owner's offline to apply).
    there = await cluster._call(owner, lambda s: s.locate([p.uid for p in rest], ring_version=v))
    newer = [p for p in rest if any(q.device == p.device for q in there.get(p.uid, []))]
    return adopted + newer, len(rest) - len(newer)


async def _bump(s: ShardStore) -> int:
    return await s.bump_move_epoch()
