"""Opening a ring's shard stores: the factory the cluster calls for a shard it has not
opened yet (a new ring names it), and a whole cluster from config-like triples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from control.common.errors import BadRequest
from control.presence.cluster import PresenceCluster
from control.presence.ring import RingSpec, ShardSpec
from control.presence.store import EmbeddedShard, ShardStore


def open_shard_for(
    backend: str, timeout_s: float, key_prefix: str
) -> Callable[[ShardSpec], ShardStore]:
    """The store factory for a ring's shards: on the embedded backend every shard is in
    this process (urls unused, as in config); on the Redis backend ``embedded:<id>`` is
    one in this process and ``redis://`` one on a Redis server."""

    def open_shard(shard: ShardSpec) -> ShardStore:
        if backend != "redis" or shard.url.startswith("embedded:"):
            return EmbeddedShard(shard.id, timeout_s)
        if shard.url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            from control.presence.redis_store import RedisShard

            return RedisShard(shard.id, shard.url, timeout_s, key_prefix)
        raise BadRequest(
            f"shard {shard.id}",
            f"url {shard.url!r}: expected redis://, redis+sentinel:// or embedded:",
        )

    return open_shard


def build_cluster(
    shards: Sequence[tuple[str, str, int]],
    backend: str,
    timeout_s: float,
    key_prefix: str,
    vnodes: int = 160,
    **kwargs: Any,
) -> PresenceCluster:
    """A cluster from (id, url, weight) triples on the embedded or Redis backend (ring
    version 1, stable)."""
    spec = RingSpec(1, tuple(ShardSpec(i, u, w) for i, u, w in shards), vnodes=vnodes)
    kwargs.setdefault("open_shard", open_shard_for(backend, timeout_s, key_prefix))
    return PresenceCluster(spec, {}, timeout_s, **kwargs)
