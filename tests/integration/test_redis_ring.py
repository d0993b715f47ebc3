"""The live ring on a real Redis shard only: tombstones expire by themselves, and a shard
restarted without persistence serves version 0 until the first write raises it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from control.presence.model import Presence, StaleRing
from control.presence.redis_store import RedisShard
from control.presence.store import TOMBSTONE_S
from control.testing import RedisServer

LIVE = 10**13


def entry(uid: str, conn: str = "c1") -> Presence:
    return Presence(uid, "phone", "n1", conn, region="north", platform="ios")


async def test_a_tombstone_is_a_key_with_a_ttl(redis_servers: list[RedisServer]) -> None:
    shard = RedisShard("s0", redis_servers[0].url, 30, f"rt{uuid.uuid4().hex[:8]}:")
    try:
        await shard.offline("alice", "phone", "c1", "closed", 1.0, ring_version=1, tombstone=True)
        key = shard.keys.tombstone(entry("alice").member)
        assert 0 < await shard.redis.ttl(key) <= TOMBSTONE_S
        await shard.redis.delete(key)  # as if it had expired
        assert await shard.adopt([(entry("alice"), LIVE)], 0, ring_version=1) == [entry("alice")]
    finally:
        await shard.close()


async def test_a_shard_restarted_empty_serves_version_zero(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    shard = RedisShard("s0", server.url, 30, "rr:")
    try:
        await shard.online(entry("alice"), LIVE, 1.0, ring_version=4)
        assert await shard.served_version() == 4
        server.kill()
        server.start()  # same port, no data
        for _ in range(3):  # the pool finds its connections dead: one error each at most
            try:
                served = await shard.served_version()
                break
            except Exception:
                continue
        else:
            pytest.fail("the restarted shard never answered")
        assert served == 0
        assert await shard.locate(["alice"], ring_version=1) == {}  # nothing to refuse with
        await shard.touch([entry("alice").member], LIVE, ring_version=4)  # the first write
        assert await shard.served_version() == 4
        with pytest.raises(StaleRing):
            await shard.online(entry("alice", "c2"), LIVE, 1.0, ring_version=3)
    finally:
        await shard.close()
        server.stop()
