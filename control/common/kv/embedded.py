"""The in-process key-value store: etcd's semantics (revisions, leases, prefix watches with
history) in one Python process, for ``imctl up`` and for tests of everything above it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from control.common.errors import FatalError, LeaseNotFound, RevisionCompacted
from control.common.kv import Entry, KeyValueStore, WatchEvent

HISTORY = 50_000  # events kept for watches that resume; older ones are "compacted"


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class EmbeddedKV(KeyValueStore):
    name = "embedded"

    def __init__(self, clock: Callable[[], float] = time.monotonic, history: int = HISTORY):
        self._clock = clock
        self._data: dict[str, Entry] = {}
        self._revision = 1
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._compacted = 0  # highest revision no longer in history
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent | None]]] = []
        self._expiry: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_forever(), name="embedded-kv-expiry")

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            try:
                await self._expiry
            except asyncio.CancelledError:
                pass
            self._expiry = None
        for _, queue in self._watchers:
            queue.put_nowait(None)
        self._watchers.clear()

    # -- leases -------------------------------------------------------------------------
    def expire_once(self) -> int:
        """Drop every lease past its deadline with its keys; returns how many expired."""
        now = self._clock()
        dead = [lid for lid, lease in self._leases.items() if lease.deadline <= now]
        for lid in dead:
            self._drop_lease(lid)
        return len(dead)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.expire_once()

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        for key in sorted(lease.keys):
            entry = self._data.get(key)
            if entry is not None and entry.lease == lease_id:
                self._remove(key)

    async def _grant_lease(self, ttl: int) -> int:
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = _Lease(ttl=ttl, deadline=self._clock() + ttl)
        return lease_id

    async def keepalive(self, lease: int) -> int:
        self.expire_once()
        found = self._leases.get(lease)
        if found is None:
            raise LeaseNotFound(f"lease {lease} not found")
        found.deadline = self._clock() + found.ttl
        return found.ttl

    async def revoke_lease(self, lease: int) -> None:
        self._drop_lease(lease)

    # -- data ---------------------------------------------------------------------------
    def _emit(self, event: WatchEvent) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].revision
        self._history.append(event)
        for prefix, queue in self._watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)

    def _store(self, key: str, value: bytes, lease: int) -> int:
        if lease and lease not in self._leases:
            raise LeaseNotFound(f"lease {lease} not found")
        self._revision += 1
        old = self._data.get(key)
        if old is not None and old.lease and old.lease != lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        created = old.create_revision if old is not None else self._revision
        self._data[key] = Entry(key, value, self._revision, created, lease)
        if lease:
            self._leases[lease].keys.add(key)
        self._emit(WatchEvent("put", key, value, self._revision))
        return self._revision

    def _remove(self, key: str) -> None:
        old = self._data.pop(key)
        if old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._revision += 1
        self._emit(WatchEvent("delete", key, b"", self._revision))

    async def _get(self, key: str) -> Entry | None:
        self.expire_once()
        return self._data.get(key)

    async def _range(self, prefix: str) -> tuple[list[Entry], int]:
        self.expire_once()
        entries = [e for k, e in sorted(self._data.items()) if k.startswith(prefix)]
        return entries, self._revision

    async def _put(self, key: str, value: bytes, lease: int) -> int:
        self.expire_once()
        return self._store(key, value, lease)

    async def _compare_and_swap(
        self, key: str, value: bytes, expected: int, lease: int
    ) -> tuple[bool, int]:
        self.expire_once()
        current = self._data.get(key)
        current_rev = current.mod_revision if current is not None else 0
        if current_rev != expected:
            return False, current_rev
        return True, self._store(key, value, lease)

    async def _delete(self, key: str, expected: int | None) -> bool:
        self.expire_once()
        current = self._data.get(key)
        if current is None:
            return False
        if expected is not None and current.mod_revision != expected:
            return False
        self._remove(key)
        return True

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        if not prefix.startswith("/"):
            raise FatalError(f"key must be an absolute path, got {prefix!r}")
        if start_revision <= self._compacted:
            raise RevisionCompacted(self._compacted)
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        # Replay and subscribe without an await in between, so no event falls in a gap.
        backlog = [
            e for e in self._history if e.revision >= start_revision and e.key.startswith(prefix)
        ]
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            for event in backlog:
                yield event
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item.revision >= start_revision:
                    yield item
        finally:
            if entry in self._watchers:
                self._watchers.remove(entry)
