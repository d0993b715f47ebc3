"""The presence sections: the status cluster's shards and the controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from control.common.config import (
    ID_PATTERN,
)
from control.common.schema import setting


@dataclass(frozen=True)
class ShardSettings:
    id: str = setting(doc="shard id (stable: the ring hashes on it)", pattern=ID_PATTERN)
    url: str = setting("", "redis://host:port/db (unused by the embedded backend)")
    weight: int = setting(1, "share of users", ge=1, le=100)


@dataclass(frozen=True)
class PresenceSettings:
    backend: Literal["embedded", "redis"] = setting("embedded", "status cluster backend")
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
                if not shard.url.startswith(("redis://", "rediss://", "unix://")):
                    problems.append(f"{path}.shards[{i}].url: expected redis://host:port/db")
        return problems


@dataclass(frozen=True)
class ControllerSettings:
    host: str = setting("127.0.0.1", "listen address (health, metrics)")
    port: int = setting(8090, "listen port", ge=0, le=65535)
    leader_ttl_s: int = setting(5, "leader lease TTL", ge=2, le=60)
    sweep_batch: int = setting(10_000, "entries expired per shard per pass", ge=1)
