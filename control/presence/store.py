"""One shard of the status cluster: the interface and its embedded implementation.

A shard keeps, per user, device -> entry; an expiry index of (uid, device, conn) by
deadline; a per-node index for evicting a dead node's users at once; exact counters; and
a bounded event stream. Every write that removes or replaces an entry compares the
connection id first, so a late disconnect never erases a newer login.

Resizes (see ``PresenceCluster``): a shard serves one ring version; a call carrying an
older one is refused with ``StaleRing`` (a write carrying a newer one raises it), so a
client that missed a ring change cannot write to the wrong owner unnoticed. The mover
copies entries with ``scan``/``adopt``/``release``, which write no events; ``offline`` may
leave a tombstone so the mover never copies back a connection that already went offline.
"""

from __future__ import annotations

import abc
import asyncio
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from control.presence.model import (
    EventKind,
    Locations,
    Presence,
    PresenceEvent,
    StaleRing,
    Status,
    member,
    split_member,
)

EVENTS_MAXLEN = 100_000
# How long an offline seen by an owner with no such entry blocks the mover from copying
# that connection in: far longer than one mover batch takes between its scan and its copy.
TOMBSTONE_S = 120.0
SCANS_KEPT = 16  # embedded scans in progress (one per shard per mover; a few spare)


class ShardStore(abc.ABC):
    """What the presence cluster needs from one shard (embedded or Redis).

    Every call that names a ``ring_version`` is fenced: older than the version the shard
    serves -> ``StaleRing(served)``, checked in the same atomic step as the work; a write
    with a newer one raises the served version to it first (reads never raise it)."""

    def __init__(self, shard_id: str, timeout_s: float) -> None:
        self.id = shard_id
        self.timeout_s = timeout_s

    @abc.abstractmethod
    async def online(
        self, p: Presence, deadline_ms: int, now: float, *, ring_version: int
    ) -> Presence | None:
        """Store ``p``; returns the entry it replaced for the same (uid, device)."""

    @abc.abstractmethod
    async def touch(
        self, members: Sequence[str], deadline_ms: int, *, ring_version: int
    ) -> list[str]:
        """Move the deadline of live entries forward; returns the members with no entry."""

    @abc.abstractmethod
    async def offline(
        self,
        uid: str,
        device: str,
        conn: str,
        reason: str,
        now: float,
        *,
        ring_version: int,
        tombstone: bool = False,
    ) -> bool:
        """Remove the entry if it is still ``conn``'s; True when it was. With ``tombstone``
        and no such entry: remember (uid, device, conn) for ``TOMBSTONE_S`` so ``adopt``
        skips it."""

    @abc.abstractmethod
    async def set_status(
        self, uid: str, device: str, conn: str, status: Status, now: float, *, ring_version: int
    ) -> bool: ...

    @abc.abstractmethod
    async def locate(self, uids: Sequence[str], *, ring_version: int) -> Locations:
        """Entries of these users (``last_seen`` not read: the push path needs none)."""

    @abc.abstractmethod
    async def who(self, uid: str, *, ring_version: int) -> list[Presence]:
        """Every entry of one user, with ``last_seen``."""

    @abc.abstractmethod
    async def counters(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def sweep(self, now_ms: int, limit: int, now: float) -> list[Presence]:
        """Take entries whose deadline passed offline; returns them."""

    @abc.abstractmethod
    async def evict_node(self, node: str, limit: int, now: float) -> int:
        """Take up to ``limit`` of ``node``'s entries offline; returns how many."""

    @abc.abstractmethod
    async def read_events(self, after: str, count: int, block_ms: int) -> list[PresenceEvent]:
        """Events after stream position ``after`` ("0": from the start, "$": only new)."""

    @abc.abstractmethod
    async def latest_event(self) -> str:
        """The position of the newest event ("0" or "0-0" when there is none). A follower
        starts from it rather than from "$", which would skip whatever arrives between two
        reads."""

    # The resize's part ------------------------------------------------------------------

    @abc.abstractmethod
    async def fence(self, version: int) -> int:
        """Serve ``version`` from now on (never lowers it); returns the version served."""

    @abc.abstractmethod
    async def served_version(self) -> int:
        """The ring version served (0 for a shard never fenced)."""

    @abc.abstractmethod
    async def replace_out(
        self, uid: str, device: str, now: float, *, ring_version: int
    ) -> Presence | None:
        """Remove (uid, device)'s entry whatever its conn, with an offline event "replaced"
        (a login on the user's new owner); returns it."""

    @abc.abstractmethod
    async def scan(
        self, cursor: str, count: int, keep: Callable[[str], bool] | None = None
    ) -> tuple[str, list[tuple[Presence, int]]]:
        """About ``count`` users' entries with their deadlines (ms). Cursor "0" starts and
        "0" returned means done; an entry present for the whole scan is returned at least
        once (Redis SCAN's promise). ``keep``: only the users it takes (by uid) are read
        (the mover reads only those whose owner changed)."""

    @abc.abstractmethod
    async def adopt(
        self, entries: Sequence[tuple[Presence, int]], now_ms: int, *, ring_version: int
    ) -> list[Presence]:
        """Copy entries in (counters and indexes, no events), skipping one when this shard
        has any entry for its (uid, device) (that one is newer), when a tombstone names its
        (uid, device, conn), or when its deadline is past. Returns what was copied."""

    @abc.abstractmethod
    async def release(self, entries: Sequence[Presence], *, ring_version: int) -> int:
        """Remove the entries still present with the same (uid, device, conn), no events;
        counters and indexes follow the stored entry (a caller may pass only the uid,
        device and conn). Returns how many."""

    @abc.abstractmethod
    async def release_scanned(
        self, entries: Sequence[Presence], *, ring_version: int
    ) -> list[Presence]:
        """The mover's release: remove the entries whose stored record is still exactly
        the given one (the one it scanned and copied), no events; returns the ones it
        skipped. A status set between the scan and this call changed the record: that
        entry stays, and the mover drops its stale copy from the new owner instead
        (``release`` by connection would lose the status)."""

    @abc.abstractmethod
    async def move_epoch(self) -> int:
        """The counts seqlock: odd while a mover batch is between its copy and release."""

    @abc.abstractmethod
    async def bump_move_epoch(self) -> int: ...

    async def close(self) -> None:
        """Release connections."""


class EmbeddedShard(ShardStore):
    """A shard in this process's memory: ``imctl up`` and the conformance suite."""

    def __init__(self, shard_id: str, timeout_s: float, maxlen: int = EVENTS_MAXLEN) -> None:
        super().__init__(shard_id, timeout_s)
        self._users: dict[str, dict[str, Presence]] = {}
        self._deadline: dict[str, int] = {}  # member -> deadline ms
        self._heap: list[tuple[int, str]] = []  # (deadline, member); stale items skipped
        self._by_node: dict[str, set[str]] = {}
        self._counters: dict[str, int] = {}
        self._events: deque[PresenceEvent] = deque(maxlen=maxlen)
        self._seq = itertools.count(1)
        self._wakeup = asyncio.Event()  # set and replaced on every event
        self._served = 0
        self._epoch = 0
        self._tombstones: dict[str, int] = {}  # member -> until (ms), oldest first
        # A scan walks a snapshot of the uids taken when it started, so an entry present
        # for the whole scan is met even while users come and go between batches.
        self._scans: OrderedDict[int, list[str]] = OrderedDict()
        self._scan_ids = itertools.count(1)

    def _write(self, version: int) -> None:
        if version < self._served:
            raise StaleRing(self._served)
        self._served = version

    def _read(self, version: int) -> None:
        if version < self._served:
            raise StaleRing(self._served)

    def _count(self, p: Presence, delta: int) -> None:
        for name in ("all", f"r:{p.region}", f"n:{p.node}", f"p:{p.platform}"):
            self._counters[name] = self._counters.get(name, 0) + delta

    def _emit(self, kind: EventKind, p: Presence, reason: str, now: float) -> None:
        event = PresenceEvent(
            kind,
            p.uid,
            p.device,
            p.node,
            p.conn,
            reason,
            now,
            f"{next(self._seq)}",
            self.id,
        )
        self._events.append(event)
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _drop(self, p: Presence) -> None:
        devices = self._users.get(p.uid, {})
        devices.pop(p.device, None)
        if not devices:
            self._users.pop(p.uid, None)
        self._deadline.pop(p.member, None)
        self._by_node.get(p.node, set()).discard(p.member)
        self._count(p, -1)

    def _remove(self, p: Presence, reason: str, now: float) -> None:
        self._drop(p)
        self._emit("offline", p, reason, now)

    def _put(self, p: Presence, deadline_ms: int) -> None:
        self._users.setdefault(p.uid, {})[p.device] = p
        self._set_deadline(p.member, deadline_ms)
        self._by_node.setdefault(p.node, set()).add(p.member)
        self._count(p, +1)

    def _set_deadline(self, m: str, deadline_ms: int) -> None:
        self._deadline[m] = deadline_ms
        heapq.heappush(self._heap, (deadline_ms, m))

    async def online(
        self, p: Presence, deadline_ms: int, now: float, *, ring_version: int
    ) -> Presence | None:
        self._write(ring_version)
        old = self._users.get(p.uid, {}).get(p.device)
        if old is not None:
            self._remove(old, "replaced", now)
        self._put(p, deadline_ms)
        self._emit("online", p, "", now)
        return old

    async def touch(
        self, members: Sequence[str], deadline_ms: int, *, ring_version: int
    ) -> list[str]:
        self._write(ring_version)
        missing = []
        for m in members:
            if m in self._deadline:
                self._set_deadline(m, deadline_ms)
            else:
                missing.append(m)
        return missing

    def _current(self, uid: str, device: str, conn: str) -> Presence | None:
        p = self._users.get(uid, {}).get(device)
        return p if p is not None and p.conn == conn else None

    async def offline(
        self,
        uid: str,
        device: str,
        conn: str,
        reason: str,
        now: float,
        *,
        ring_version: int,
        tombstone: bool = False,
    ) -> bool:
        self._write(ring_version)
        p = self._current(uid, device, conn)
        if p is None:
            if tombstone:
                self._bury(member(uid, device, conn), int(now * 1000))
            return False
        self._remove(p, reason, now)
        return True

    def _bury(self, m: str, now_ms: int) -> None:
        self._tombstones.pop(m, None)  # re-inserted last: the dict stays oldest first
        self._tombstones[m] = now_ms + int(TOMBSTONE_S * 1000)
        self._forget_tombstones(now_ms)

    def _forget_tombstones(self, now_ms: int) -> None:
        for m, until in list(itertools.islice(self._tombstones.items(), 64)):
            if until > now_ms:
                break
            del self._tombstones[m]

    async def set_status(
        self, uid: str, device: str, conn: str, status: Status, now: float, *, ring_version: int
    ) -> bool:
        self._write(ring_version)
        p = self._current(uid, device, conn)
        if p is None:
            return False
        updated = p.with_status(status)
        self._users[uid][device] = updated
        self._emit("status", updated, status, now)
        return True

    async def locate(self, uids: Sequence[str], *, ring_version: int) -> Locations:
        self._read(ring_version)
        out: dict[str, list[Presence]] = {}
        for uid in uids:
            devices = self._users.get(uid)
            if devices:
                out[uid] = list(devices.values())
        return Locations(entries=out)

    async def who(self, uid: str, *, ring_version: int) -> list[Presence]:
        self._read(ring_version)
        entries = []
        for p in self._users.get(uid, {}).values():
            deadline = self._deadline.get(p.member, 0)
            entries.append(_with_last_seen(p, deadline, self.timeout_s))
        return entries

    async def fence(self, version: int) -> int:
        self._served = max(self._served, version)
        return self._served

    async def served_version(self) -> int:
        return self._served

    async def replace_out(
        self, uid: str, device: str, now: float, *, ring_version: int
    ) -> Presence | None:
        self._write(ring_version)
        old = self._users.get(uid, {}).get(device)
        if old is not None:
            self._remove(old, "replaced", now)
        return old

    async def scan(
        self, cursor: str, count: int, keep: Callable[[str], bool] | None = None
    ) -> tuple[str, list[tuple[Presence, int]]]:
        if cursor == "0":
            scan_id, at = next(self._scan_ids), 0
            self._scans[scan_id] = list(self._users)
            while len(self._scans) > SCANS_KEPT:
                self._scans.popitem(last=False)
        else:
            scan_id, at = (int(x) for x in cursor.split(".", 1))
            if scan_id not in self._scans:  # forgotten (too many scans): a fresh snapshot
                self._scans[scan_id] = list(self._users)
        uids = self._scans[scan_id]
        batch = uids[at : at + max(1, count)]
        found = [
            (p, self._deadline.get(p.member, 0))
            for uid in batch
            if keep is None or keep(uid)
            for p in self._users.get(uid, {}).values()
        ]
        at += len(batch)
        if at >= len(uids):
            del self._scans[scan_id]
            return "0", found
        return f"{scan_id}.{at}", found

    async def adopt(
        self, entries: Sequence[tuple[Presence, int]], now_ms: int, *, ring_version: int
    ) -> list[Presence]:
        self._write(ring_version)
        self._forget_tombstones(now_ms)
        adopted = []
        for p, deadline in entries:
            if deadline <= now_ms or p.device in self._users.get(p.uid, {}):
                continue
            if self._tombstones.get(p.member, 0) > now_ms:
                continue
            self._put(p, deadline)
            adopted.append(p)
        return adopted

    async def release(self, entries: Sequence[Presence], *, ring_version: int) -> int:
        self._write(ring_version)
        released = 0
        for e in entries:
            p = self._current(e.uid, e.device, e.conn)
            if p is not None:
                self._drop(p)
                released += 1
        return released

    async def release_scanned(
        self, entries: Sequence[Presence], *, ring_version: int
    ) -> list[Presence]:
        self._write(ring_version)
        skipped = []
        for e in entries:
            p = self._users.get(e.uid, {}).get(e.device)
            if p is not None and p.pack() == e.pack():
                self._drop(p)
            else:
                skipped.append(e)
        return skipped

    async def move_epoch(self) -> int:
        return self._epoch

    async def bump_move_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    async def counters(self) -> dict[str, int]:
        return {k: v for k, v in self._counters.items() if v}

    async def sweep(self, now_ms: int, limit: int, now: float) -> list[Presence]:
        removed: list[Presence] = []
        while self._heap and self._heap[0][0] <= now_ms and len(removed) < limit:
            deadline, m = heapq.heappop(self._heap)
            if self._deadline.get(m) != deadline:
                continue  # touched since, or gone
            del self._deadline[m]
            uid, device, conn = split_member(m)
            p = self._current(uid, device, conn)
            if p is not None:
                self._deadline[m] = deadline  # _remove pops it again
                self._remove(p, "timeout", now)
                removed.append(p)
        return removed

    async def evict_node(self, node: str, limit: int, now: float) -> int:
        members = self._by_node.get(node, set())
        removed = 0
        for m in list(itertools.islice(members, limit)):
            members.discard(m)
            uid, device, conn = split_member(m)
            p = self._current(uid, device, conn)
            if p is not None and p.node == node:
                self._remove(p, "node_down", now)
                removed += 1
        if not members:
            self._by_node.pop(node, None)
        return removed

    async def latest_event(self) -> str:
        return self._events[-1].id if self._events else "0"

    async def read_events(self, after: str, count: int, block_ms: int) -> list[PresenceEvent]:
        def newer() -> list[PresenceEvent]:
            start = 0 if after == "0" else int(after)
            return [e for e in self._events if int(e.id) > start][:count]

        if after == "$":
            after = self._events[-1].id if self._events else "0"
        found = newer()
        if found or block_ms <= 0:
            return found
        try:
            await asyncio.wait_for(self._wakeup.wait(), block_ms / 1000)
        except TimeoutError:
            return []
        return newer()


def _with_last_seen(p: Presence, deadline_ms: int, timeout_s: float) -> Presence:
    return p._replace(last_seen=max(0.0, deadline_ms / 1000 - timeout_s))


__all__ = ["EVENTS_MAXLEN", "TOMBSTONE_S", "EmbeddedShard", "ShardStore", "member"]
