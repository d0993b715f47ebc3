"""Every key a presence script writes is one the caller passed in KEYS (what Redis Cluster
requires, and what lets hash tags group a user's keys later). A real Redis reports each
write through keyspace notifications; the shards record the KEYS of every script call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from control.presence.keys import RedisKeys
from control.presence.model import Presence
from control.presence.redis_store import RedisShard
from tests.servers import RedisServer


def entry(uid: str, device: str, node: str, conn: str) -> Presence:
    return Presence(uid, device, node, conn, region="north", platform="ios")


class Recorded:
    """Wraps the shards' script calls and remembers every key passed in KEYS."""

    def __init__(self) -> None:
        self.passed: set[str] = set()

    def watch(self, shard: RedisShard) -> RedisShard:
        run, run_packed = shard._run, shard._run_packed

        async def recorded_run(name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            self.passed.update(keys)
            return await run(name, keys, args)

        async def recorded_packed(name: str, keys: Sequence[str], chunks: Any) -> list[Any]:
            self.passed.update(keys)
            return await run_packed(name, keys, chunks)

        packed_keys = shard._run_packed_keys

        async def recorded_packed_keys(name: str, calls: Any, version: int) -> list[Any]:
            for keys, _args in calls:
                self.passed.update(keys)
            self.passed.add(shard.k_ring)
            return await packed_keys(name, calls, version)

        shard._run_packed_keys = recorded_packed_keys  # type: ignore[method-assign]
        shard._run = recorded_run  # type: ignore[method-assign]
        shard._run_packed = recorded_packed  # type: ignore[method-assign]
        return shard


@pytest.fixture
async def notified(redis_servers: list[RedisServer]) -> AsyncIterator[tuple[str, set[str]]]:
    """A fresh key prefix and the set of its keys Redis reports as written."""
    prefix = f"lk{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(redis_servers[0].url, decode_responses=True)
    await client.config_set("notify-keyspace-events", "KA")
    pubsub = client.pubsub()
    channel = "__keyspace@0__:"
    await pubsub.psubscribe(f"{channel}{prefix}*")
    written: set[str] = set()

    async def collect() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                written.add(str(message["channel"])[len(channel) :])

    task = asyncio.create_task(collect())
    try:
        yield prefix, written
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await pubsub.aclose()
        await client.config_set("notify-keyspace-events", "")
        await client.aclose()


async def test_scripts_write_only_the_keys_they_are_given(
    redis_servers: list[RedisServer], notified: tuple[str, set[str]]
) -> None:
    prefix, written = notified
    url = redis_servers[0].url
    keys = RedisKeys(prefix)
    recorded = Recorded()
    # Three processes: two access nodes and a controller, each with its own shard client,
    # so each meets entries on nodes it never logged anyone in on.
    n1 = recorded.watch(RedisShard("s0", url, 30, prefix))
    n2 = recorded.watch(RedisShard("s0", url, 30, prefix))
    controller = recorded.watch(RedisShard("s0", url, 30, prefix))
    try:
        assert (
            await n1.online(entry("alice", "phone", "n1", "c1"), 10**13, 1.0, ring_version=0)
            is None
        )
        await asyncio.gather(
            n1.online(entry("bob", "phone", "n1", "c2"), 10**13, 1.0, ring_version=0),
            n1.online(entry("carol", "phone", "n1", "c3"), 1, 1.0, ring_version=0),  # due at once
            n1.online(entry("dave", "phone", "n1", "c4"), 10**13, 1.0, ring_version=0),
        )
        # alice moves to n2: the entry it replaces is on n1, which n2's client never used.
        old = await n2.online(entry("alice", "phone", "n2", "c5"), 10**13, 2.0, ring_version=0)
        assert old is not None and (old.node, old.conn) == ("n1", "c1")
        assert not await n1.offline("alice", "phone", "c1", "closed", 3.0, ring_version=0)  # stale
        assert await n2.offline(
            "bob", "phone", "c2", "closed", 3.0, ring_version=0
        )  # bob was on n1
        assert await n2.set_status("alice", "phone", "c5", "busy", 3.0, ring_version=0)
        assert (
            await n2.touch([entry("alice", "phone", "n2", "c5").member], 10**13, ring_version=0)
            == []
        )
        swept = await controller.sweep(10**12, 100, 4.0)
        assert [(p.uid, p.node) for p in swept] == [("carol", "n1")]
        assert await controller.evict_node("n1", 100, 5.0) == 1  # dave
        assert sorted(await n2.locate(["alice", "bob", "carol", "dave"], ring_version=0)) == [
            "alice"
        ]
        counters = await n2.counters()
        assert counters.get("all") == 1 and counters.get("n:n2") == 1
        assert not await n2.redis.exists(keys.node("n1"))
        assert await n2.redis.smembers(keys.node("n2")) == {
            entry("alice", "phone", "n2", "c5").member
        }
        # Every write so far has been reported: a marker written last has arrived.
        await n2.redis.set(prefix + "marker", "1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while prefix + "marker" not in written:
            assert loop.time() < deadline, "keyspace notifications did not arrive"
            await asyncio.sleep(0.02)
        written.discard(prefix + "marker")
        assert keys.user("alice") in written and keys.node("n1") in written
        assert written <= recorded.passed, sorted(written - recorded.passed)
    finally:
        for shard in (n1, n2, controller):
            await shard.close()


async def test_ring_scripts_write_only_the_keys_they_are_given(
    redis_servers: list[RedisServer], notified: tuple[str, set[str]]
) -> None:
    """The fenced scripts (the served-version key), the tombstones, and the mover's adopt
    and release on a shard that has never seen the nodes it is asked about."""
    prefix, written = notified
    url = redis_servers[0].url
    keys = RedisKeys(prefix)
    recorded = Recorded()
    node = recorded.watch(RedisShard("s0", url, 30, prefix))
    mover = recorded.watch(RedisShard("s0", url, 30, prefix))
    try:
        assert await mover.fence(2) == 2
        await node.online(entry("alice", "phone", "n1", "c1"), 10**13, 1.0, ring_version=3)
        await node.online(entry("bob", "phone", "n2", "c2"), 10**13, 1.0, ring_version=3)
        assert not await node.offline(
            "carol", "phone", "c3", "closed", 2.0, ring_version=3, tombstone=True
        )
        gone = await mover.replace_out("alice", "phone", 2.0, ring_version=3)
        assert gone is not None and gone.conn == "c1"
        adopted = await mover.adopt(
            [
                (entry("dave", "phone", "n3", "c4"), 10**13),
                (entry("carol", "phone", "n3", "c3"), 10**13),
            ],
            10**12,
            ring_version=3,
        )
        assert [p.uid for p in adopted] == ["dave"]
        assert await mover.release([entry("bob", "phone", "n2", "c2")], ring_version=3) == 1
        assert await mover.release_scanned(adopted, ring_version=3) == []
        await mover.adopt([(adopted[0], 10**13)], 10**12, ring_version=3)
        assert sorted(await mover.locate(["alice", "bob", "carol", "dave"], ring_version=3)) == [
            "dave"
        ]
        await node.redis.set(prefix + "marker", "1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while prefix + "marker" not in written:
            assert loop.time() < deadline, "keyspace notifications did not arrive"
            await asyncio.sleep(0.02)
        written.discard(prefix + "marker")
        assert keys.ring in written and keys.node("n3") in written
        assert keys.tombstone(entry("carol", "phone", "n1", "c3").member) in written
        assert written <= recorded.passed, sorted(written - recorded.passed)
    finally:
        for shard in (node, mover):
            await shard.close()
