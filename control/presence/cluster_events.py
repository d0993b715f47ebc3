"""The Redis Cluster engine's event stream: one stream per bucket (in the bucket's slot,
written by the same script as the change), followed by polling every bucket in one
cluster pipeline (XREAD without BLOCK: a blocking read per bucket would hold hundreds of
connections), each bucket from the last event delivered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from control.presence.model import PresenceEvent
from control.presence.redis_store import parse_events

if TYPE_CHECKING:
    from control.presence.cluster_engine import RedisClusterPresence

log = logging.getLogger(__name__)
POLL_MIN_S, POLL_MAX_S = 0.01, 0.1  # between two polls that found nothing
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0  # a bucket that could not be read
READ_COUNT = 500  # events per bucket per poll


async def follow_buckets(
    engine: RedisClusterPresence,
    block_ms: int,
    start: str | Mapping[str, str],
    stop: asyncio.Event | None,
) -> AsyncIterator[PresenceEvent]:
    """See ``RedisClusterPresence.events``. A bucket that cannot be read (its master
    failing over) is read again from the same position; events lost with a master's
    unreplicated writes are lost (asynchronous replication), the rest arrive in order."""
    ids = [s.id for s in engine.buckets]
    if start == "$":  # pinned once: "$" on every read would drop events between reads
        positions = await engine.event_positions()
    elif isinstance(start, str):
        positions = dict.fromkeys(ids, start)
    else:
        positions = {b: start.get(b, "0") for b in ids}
    idle_s = min(max(block_ms / 1000, POLL_MIN_S), POLL_MAX_S)
    backoff = RETRY_FIRST_S
    while stop is None or not stop.is_set():
        commands: list[tuple[Any, ...]] = [
            ("XREAD", "COUNT", READ_COUNT, "STREAMS", s.k_ev, positions[s.id])
            for s in engine.buckets
        ]
        replies = await engine._pipeline(commands)
        found = False
        failed = None
        for s, reply in zip(engine.buckets, replies, strict=True):
            if isinstance(reply, Exception):
                failed = reply
                continue
            streams: Any = reply or []
            for _key, entries in streams.items() if isinstance(streams, dict) else streams:
                if not entries:
                    continue
                # past every entry read, ours or not (one added by hand is skipped)
                positions[s.id] = str(entries[-1][0])
                for event in parse_events(s.id, entries):
                    found = True
                    yield event
        if failed is not None:
            log.warning("cluster events: %s; again in %.1fs", failed, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)
            continue
        backoff = RETRY_FIRST_S
        if not found:
            await asyncio.sleep(idle_s)
