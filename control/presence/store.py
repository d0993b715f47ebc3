"""One shard of the status cluster: the interface and its embedded implementation.

A shard keeps, per user, device -> entry; an expiry index of (uid, device, conn) by
deadline; a per-node index for evicting a dead node's users at once; exact counters; and
a bounded event stream. Every write that removes or replaces an entry compares the
connection id first, so a late disconnect never erases a newer login.
"""

from __future__ import annotations

import abc
import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Sequence

from control.presence.model import (
    EventKind,
    Locations,
    Presence,
    PresenceEvent,
    Status,
    member,
    split_member,
)

EVENTS_MAXLEN = 100_000


class ShardStore(abc.ABC):
    """What the presence cluster needs from one shard (embedded or Redis)."""

    def __init__(self, shard_id: str, timeout_s: float) -> None:
        self.id = shard_id
        self.timeout_s = timeout_s

    @abc.abstractmethod
    async def online(self, p: Presence, deadline_ms: int, now: float) -> Presence | None:
        """Store ``p``; returns the entry it replaced for the same (uid, device)."""

    @abc.abstractmethod
    async def touch(self, members: Sequence[str], deadline_ms: int) -> list[str]:
        """Move the deadline of live entries forward; returns the members with no entry."""

    @abc.abstractmethod
    async def offline(self, uid: str, device: str, conn: str, reason: str, now: float) -> bool:
        """Remove the entry if it is still ``conn``'s; True when it was."""

    @abc.abstractmethod
    async def set_status(
        self, uid: str, device: str, conn: str, status: Status, now: float
    ) -> bool: ...

    @abc.abstractmethod
    async def locate(self, uids: Sequence[str]) -> Locations:
        """Entries of these users (``last_seen`` not read: the push path needs none)."""

    @abc.abstractmethod
    async def who(self, uid: str) -> list[Presence]:
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

    def _remove(self, p: Presence, reason: str, now: float) -> None:
        devices = self._users.get(p.uid, {})
        devices.pop(p.device, None)
        if not devices:
            self._users.pop(p.uid, None)
        self._deadline.pop(p.member, None)
        self._by_node.get(p.node, set()).discard(p.member)
        self._count(p, -1)
        self._emit("offline", p, reason, now)

    def _set_deadline(self, m: str, deadline_ms: int) -> None:
        self._deadline[m] = deadline_ms
        heapq.heappush(self._heap, (deadline_ms, m))

    async def online(self, p: Presence, deadline_ms: int, now: float) -> Presence | None:
        old = self._users.get(p.uid, {}).get(p.device)
        if old is not None:
            self._remove(old, "replaced", now)
        self._users.setdefault(p.uid, {})[p.device] = p
        self._set_deadline(p.member, deadline_ms)
        self._by_node.setdefault(p.node, set()).add(p.member)
        self._count(p, +1)
        self._emit("online", p, "", now)
        return old

    async def touch(self, members: Sequence[str], deadline_ms: int) -> list[str]:
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

    async def offline(self, uid: str, device: str, conn: str, reason: str, now: float) -> bool:
        p = self._current(uid, device, conn)
        if p is None:
            return False
        self._remove(p, reason, now)
        return True

    async def set_status(
        self, uid: str, device: str, conn: str, status: Status, now: float
    ) -> bool:
        p = self._current(uid, device, conn)
        if p is None:
            return False
        updated = p.with_status(status)
        self._users[uid][device] = updated
        self._emit("status", updated, status, now)
        return True

    async def locate(self, uids: Sequence[str]) -> Locations:
        out: dict[str, list[Presence]] = {}
        for uid in uids:
            devices = self._users.get(uid)
            if devices:
                out[uid] = list(devices.values())
        return Locations(entries=out)

    async def who(self, uid: str) -> list[Presence]:
        entries = []
        for p in self._users.get(uid, {}).values():
            deadline = self._deadline.get(p.member, 0)
            entries.append(_with_last_seen(p, deadline, self.timeout_s))
        return entries

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


__all__ = ["EVENTS_MAXLEN", "EmbeddedShard", "ShardStore", "member"]
