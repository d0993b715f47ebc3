"""A live in-memory copy of one key prefix: list, then watch from the listed revision + 1.

A broken stream resumes from the last revision seen; compacted history re-lists. Every
``verify_s`` a quiet watch is checked against a fresh listing, since a stream that ended
silently would otherwise freeze the copy; a listing whose content differs from the copy is
adopted whatever the revisions say. An event for a key outside the prefix (a misrouted
stream) is dropped, counted, and ends the stream, which is then watched afresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic, TypeVar

from control.common.errors import BackendUnavailable, ImctlError, RevisionCompacted
from control.common.kv import KeyValueStore, WatchEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

# A stream that breaks is retried after at most this long (the delay doubles from
# ``retry_s`` up to it, jittered below it): a mirror follows etcd again within this of it
# answering (after an outage the retry must not have backed off to many seconds).
RETRY_MAX_S = 1.0


class ForeignEvent(BackendUnavailable):
    """A watch stream delivered an event for a key outside its prefix: it is misrouted."""


class PrefixMirror(Generic[T]):
    def __init__(
        self,
        kv: KeyValueStore,
        prefix: str,
        parse: Callable[[str, bytes], T | None],
        on_change: Callable[[Mapping[str, T]], None],
        verify_s: float = 10.0,
        retry_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.prefix = prefix
        self.parse = parse
        self.on_change = on_change
        self.verify_s = verify_s
        self.retry_s = min(retry_s, RETRY_MAX_S)
        self.clock = clock
        self.items: dict[str, T] = {}
        self.revision = 0
        self.revisions: dict[str, int] = {}  # name -> the mod_revision of its item
        self.synced = asyncio.Event()
        self.resumes = 0
        self.relists = 0
        self.foreign = 0  # events dropped for a key outside the prefix
        self._foreign_logged_at: float | None = None
        self._listed: dict[str, int] = {}  # the last listing's revisions by name

    def _name(self, key: str) -> str:
        return key[len(self.prefix) :]

    def _drop_foreign(self, key: str) -> None:
        """Count an event outside the prefix; log it at most once per ``verify_s``."""
        self.foreign += 1
        now = self.clock()
        if self._foreign_logged_at is None or now - self._foreign_logged_at >= self.verify_s:
            self._foreign_logged_at = now
            log.warning(
                "watch on %s delivered an event for %s (%d such so far); dropped it and "
                "watching again",
                self.prefix,
                key,
                self.foreign,
            )

    async def _list(self) -> tuple[dict[str, T], int]:
        entries, revision = await self.kv.range(self.prefix)
        items: dict[str, T] = {}
        self._listed = {}
        for entry in entries:
            value = self.parse(entry.key, entry.value)
            if value is not None:
                items[self._name(entry.key)] = value
                self._listed[self._name(entry.key)] = entry.mod_revision
        return items, revision

    async def sync(self) -> None:
        """Adopt a full listing."""
        self.items, self.revision = await self._list()
        self.revisions = self._listed
        self.relists += 1
        self.on_change(dict(self.items))
        self.synced.set()

    async def _consume(self) -> None:
        stream = self.kv.watch(self.prefix, self.revision + 1)
        try:
            await self._apply(stream)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # end the stream now, not whenever it is collected
                await aclose()

    async def _apply(self, stream: AsyncIterator[WatchEvent]) -> None:
        async for event in stream:
            if not event.key.startswith(self.prefix):
                # Never applied (the name would be cut from another prefix's key) nor
                # allowed to move the revision; the stream cannot be trusted any more.
                self._drop_foreign(event.key)
                raise ForeignEvent(f"event for {event.key} on the watch of {self.prefix}")
            name = self._name(event.key)
            value = self.parse(event.key, event.value) if event.kind == "put" else None
            if value is None:
                self.items.pop(name, None)
                self.revisions.pop(name, None)
            else:
                self.items[name] = value
                self.revisions[name] = event.revision
            self.revision = max(self.revision, event.revision)
            self.on_change(dict(self.items))

    async def verify_once(self) -> bool:
        """True when the copy matches the store; otherwise adopt the listing.

        Content decides, not revisions: a copy whose revision was pushed up by events it
        should never have seen would otherwise never be corrected. A listing older than the
        copy is harmless to adopt: the watch restarts from its revision and replays.
        """
        items, revision = await self._list()
        if items == self.items:
            return True
        self.revisions = self._listed
        log.warning(
            "watch on %s differs from a listing (copy rev %d, listing rev %d); re-listed",
            self.prefix,
            self.revision,
            revision,
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
                    await asyncio.wait({stopped}, timeout=backoff * (0.5 + random.random() / 2))
                    backoff = min(backoff * 2, RETRY_MAX_S)
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
