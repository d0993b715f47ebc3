"""``imctl presence status``: the engine, its members and their health, for either engine
(a ring's shards, or a Redis Cluster's masters and replicas)."""

from __future__ import annotations

import asyncio
from typing import Any

from control.common.errors import BackendUnavailable
from control.presence.model import Counts
from control.presence.store import EmbeddedShard, ShardStore

PROBE_S = 2.0  # a member that does not answer within this is reported down


def engine_of(store: ShardStore) -> str:
    if isinstance(store, EmbeddedShard):
        return "embedded"
    url = str(getattr(store, "url", ""))
    return "redis+sentinel" if url.startswith("redis+sentinel://") else "redis"


async def _shard(sid: str, store: ShardStore, breaker: str) -> dict[str, Any]:
    member: dict[str, Any] = {"id": sid, "engine": engine_of(store), "breaker": breaker}
    url = str(getattr(store, "url", ""))
    if url:
        member["url"] = url
    try:
        counters = await asyncio.wait_for(store.counters(), PROBE_S)
    except (BackendUnavailable, TimeoutError) as exc:
        member.update(health="down", error=str(exc) or "no answer")
        return member
    member.update(health="ok", online=Counts.from_counters(counters).total)
    return member


async def presence_status(presence: Any) -> dict[str, Any]:
    """What an operator asks first when presence misbehaves: which engine, which members,
    which of them answer."""
    own = getattr(presence, "status", None)
    if own is not None:  # the Redis Cluster engine reads CLUSTER NODES itself
        return dict(await own())
    spec = presence.spec
    stats = presence.stats.shards
    shards = dict(presence.shards)
    members = await asyncio.gather(
        *(
            _shard(sid, store, stats[sid].breaker if sid in stats else "closed")
            for sid, store in sorted(shards.items())
        )
    )
    engines = sorted({m["engine"] for m in members})
    return {
        "engine": "ring" if engines != ["embedded"] else "embedded",
        "healthy": all(m["health"] == "ok" for m in members),
        "ring": {"version": spec.version, "state": spec.state},
        "members": list(members),
    }
