"""A live in-memory copy of one key prefix: list, then watch from the listed revision + 1.

A broken stream resumes from the last revision seen; compacted history re-lists. Every
``verify_s`` a quiet watch is checked against a fresh listing, since a stream that ended
silently would otherwise freeze the copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from control.common.errors import BackendUnavailable, ImctlError, RevisionCompacted
from control.common.kv import KeyValueStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class PrefixMirror(Generic[T]):
    def __init__(
        self,
        kv: KeyValueStore,
        prefix: str,
        parse: Callable[[str, bytes], T | None],
        on_change: Callable[[Mapping[str, T]], None],
        verify_s: float = 10.0,
        retry_s: float = 0.5,
    ) -> None:
        self.kv = kv
        self.prefix = prefix
        self.parse = parse
        self.on_change = on_change
        self.verify_s = verify_s
        self.retry_s = retry_s
        self.items: dict[str, T] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.resumes = 0
        self.relists = 0

    def _name(self, key: str) -> str:
        return key[len(self.prefix) :]

    async def _list(self) -> tuple[dict[str, T], int]:
        entries, revision = await self.kv.range(self.prefix)
        items: dict[str, T] = {}
        for entry in entries:
            value = self.parse(entry.key, entry.value)
            if value is not None:
                items[self._name(entry.key)] = value
        return items, revision

    async def sync(self) -> None:
        """Adopt a full listing."""
        self.items, self.revision = await self._list()
        self.relists += 1
        self.on_change(dict(self.items))
        self.synced.set()

    async def _consume(self) -> None:
        async for event in self.kv.watch(self.prefix, self.revision + 1):
            name = self._name(event.key)
            value = self.parse(event.key, event.value) if event.kind == "put" else None
            if value is None:
                self.items.pop(name, None)
            else:
                self.items[name] = value
            self.revision = max(self.revision, event.revision)
            self.on_change(dict(self.items))

    async def verify_once(self) -> bool:
        """True when the copy matches the store; otherwise adopt the listing."""
        items, revision = await self._list()
        if items == self.items or revision <= self.revision:
            return True
        log.warning(
            "watch on %s fell behind (rev %d < %d); re-listed", self.prefix, self.revision, revision
        )
        self.items, self.revision = items, revision
        self.on_change(dict(self.items))
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the copy current until ``stop``; backend outages are retried forever."""
        backoff = self.retry_s
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    if not self.synced.is_set():
                        await self.sync()
                    await self._follow(stopped)
                    backoff = self.retry_s
                except RevisionCompacted as exc:
                    log.warning("watch on %s: %s; re-listing", self.prefix, exc)
                    self.synced.clear()
                except BackendUnavailable as exc:
                    self.resumes += 1
                    log.warning(
                        "watch on %s interrupted (%s); resuming from rev %d",
                        self.prefix,
                        exc,
                        self.revision + 1,
                    )
                    await asyncio.wait({stopped}, timeout=backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 5.0)
        finally:
            stopped.cancel()

    async def _follow(self, stopped: asyncio.Future[Any]) -> None:
        consumer = asyncio.create_task(self._consume(), name=f"watch:{self.prefix}")
        try:
            waiting: set[asyncio.Future[Any]] = {consumer, stopped}
            while True:
                done, _ = await asyncio.wait(
                    waiting, timeout=self.verify_s, return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    return
                if consumer in done:
                    consumer.result()  # raises why the stream ended
                    raise BackendUnavailable("watch stream ended")
                if not await self.verify_once():
                    return  # restart the stream from the adopted revision
        finally:
            consumer.cancel()
            try:
                await consumer
            except (asyncio.CancelledError, ImctlError):
                pass
