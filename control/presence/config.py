"""The presence sections: the status cluster's shards and the controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from control.common.config import (
    ID_PATTERN,
)
from control.common.schema import setting
from control.presence.resize import url_problem


@dataclass(frozen=True)
class ShardSettings:
    id: str = setting(doc="shard id (stable: the ring hashes on it)", pattern=ID_PATTERN)
    url: str = setting(
        "",
        "redis://host:port/db, or redis+sentinel://host:port[,host:port]/master-name for a"
        " Sentinel-managed (replicated) shard (unused by the embedded backend)",
    )
    weight: int = setting(1, "share of users", ge=1, le=100)


@dataclass(frozen=True)
class RedisClusterSettings:
    seeds: tuple[str, ...] = setting(
        (), "host:port of some Redis Cluster nodes (the rest are discovered)"
    )
    buckets: int = setting(
        256, "hash-tag buckets users are spread over (the unit Redis Cluster moves)", ge=1, le=16384
    )


@dataclass(frozen=True)
class PresenceSettings:
    backend: Literal["embedded", "redis", "redis-cluster"] = setting(
        "embedded",
        "engine: embedded, redis (a ring of Redis shards) or redis-cluster (a Redis Cluster)",
    )
    cluster: RedisClusterSettings = setting(
        RedisClusterSettings(), "the Redis Cluster engine (backend: redis-cluster)"
    )
    shards: tuple[ShardSettings, ...] = setting(
        (ShardSettings(id="s0"),), "status cluster shards", min_len=1
    )
    key_prefix: str = setting("imctl:", "Redis key prefix", pattern=r"[A-Za-z0-9_.:-]{1,32}")
    vnodes: int = setting(160, "virtual nodes per shard on the ring", ge=1, le=10_000)
    flush_s: float = setting(1.0, "heartbeat batches are flushed this often", gt=0, le=60)

    def check(self, path: str) -> list[str]:
        problems = []
        ids = [s.id for s in self.shards]
        if len(set(ids)) != len(ids):
            problems.append(f"{path}.shards: shard ids must be unique")
        if self.backend == "redis":
            for i, shard in enumerate(self.shards):
                if url_problem(shard.url) is not None or shard.url.startswith("embedded:"):
                    problems.append(
                        f"{path}.shards[{i}].url: expected redis://host:port/db or"
                        " redis+sentinel://host:port[,host:port]/master-name"
                    )
        if self.backend == "redis-cluster":
            if not self.cluster.seeds:
                problems.append(f"{path}.cluster.seeds: at least one host:port")
            for i, seed in enumerate(self.cluster.seeds):
                host, _, port = seed.rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    problems.append(f"{path}.cluster.seeds[{i}]: {seed!r} is not host:port")
        return problems


@dataclass(frozen=True)
class ControllerSettings:
    host: str = setting("127.0.0.1", "listen address (health, metrics)")
    port: int = setting(8090, "listen port", ge=0, le=65535)
    leader_ttl_s: int = setting(5, "leader lease TTL", ge=2, le=60)
    sweep_batch: int = setting(10_000, "entries expired per shard per pass", ge=1)
