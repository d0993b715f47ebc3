"""The status cluster's event stream: every shard's events merged, each shard in order,
following the shards a ring change adds and leaving the ones it drops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, Protocol

from control.common.errors import BackendUnavailable
from control.presence.model import PresenceEvent
from control.presence.store import ShardStore


class EventSource(Protocol):
    """What following the events needs of the cluster (PresenceCluster is one)."""

    @property
    def shards(self) -> Mapping[str, ShardStore]: ...

    async def event_positions(self) -> dict[str, str]: ...

    def shards_changed(self) -> asyncio.Event: ...


log = logging.getLogger(__name__)
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0  # an unreachable shard's event reads
QUEUE_MAX = 10_000


async def follow_events(
    cluster: EventSource,
    block_ms: int,
    start: str | Mapping[str, str],
    stop: asyncio.Event | None,
) -> AsyncIterator[PresenceEvent]:
    """See ``PresenceCluster.events``."""
    if start == "$":  # pin "now" once: "$" on every read would drop events between reads
        positions = await cluster.event_positions()
    elif isinstance(start, str):
        positions = {sid: start for sid in cluster.shards}
    else:
        positions = {sid: start.get(sid, "0") for sid in cluster.shards}
    queue: asyncio.Queue[PresenceEvent] = asyncio.Queue(maxsize=QUEUE_MAX)

    async def follow(sid: str) -> None:
        shard = cluster.shards[sid]
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

    tasks = {sid: asyncio.create_task(follow(sid)) for sid in positions}
    retired: list[asyncio.Task[None]] = []
    watched = cluster.shards_changed()
    getter: asyncio.Future[PresenceEvent] | None = None
    changed: asyncio.Future[Any] | None = None
    try:
        while True:
            if watched.is_set():  # checked every turn: a change may land beside an event
                watched = cluster.shards_changed()
                retired += _retarget(cluster, tasks, positions, follow)
            getter = asyncio.ensure_future(queue.get())
            changed = asyncio.ensure_future(watched.wait())
            done, _ = await asyncio.wait(
                {getter, changed, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED
            )
            changed.cancel()
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            if changed in done:
                continue
            for t in tasks.values():
                if t.done():
                    t.result()  # surfaces a shard failure
            return
    finally:
        # The getter too: the reader cancelled mid-wait leaves it pending otherwise.
        started: list[asyncio.Future[Any]] = [*tasks.values(), *retired]
        started += [f for f in (getter, changed) if f is not None]
        for f in started:
            f.cancel()
        await asyncio.gather(*started, return_exceptions=True)


def _retarget(
    cluster: EventSource,
    tasks: dict[str, asyncio.Task[None]],
    positions: dict[str, str],
    follow: Callable[[str], Coroutine[Any, Any, None]],
) -> list[asyncio.Task[None]]:
    """Follow the shards the cluster has now: a new one from its first event (it is new
    to this ring: every event on it is about its users since it joined). Returns the
    tasks of the shards left, cancelled."""
    left = [tasks.pop(sid) for sid in [s for s in tasks if s not in cluster.shards]]
    for task in left:
        task.cancel()
    for sid in cluster.shards:
        if sid not in tasks:
            positions.setdefault(sid, "0")
            tasks[sid] = asyncio.create_task(follow(sid))
    return left
