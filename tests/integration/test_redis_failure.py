"""A Redis shard dies and comes back empty under a running access node: connections stay
up, new logins are refused cleanly meanwhile, and the node logs its live connections in
again on the next heartbeat."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from control.common.errors import BackendUnavailable
from control.presence import redis_store
from control.presence.model import Presence, ShardUnavailable
from control.presence.shards import build_cluster
from control.testing import RedisServer
from tests.cluster import LocalCluster, cluster_settings


async def test_shard_restart_is_healed_by_heartbeats(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    settings = cluster_settings(
        nodes=1,
        presence={"backend": "redis", "shards": [{"id": "s0", "url": redis.url}], "flush_s": 0.2},
    )
    try:
        async with LocalCluster(settings) as c, aiohttp.ClientSession() as http:
            ws, welcome = await c.connect(http, "alice", "n0")
            assert (await c.presence.who("alice"))[0].conn == welcome["conn"]

            redis.kill()
            await ws.send_json({"t": "ping"})  # the node keeps serving its connections
            assert (await ws.receive_json(timeout=5))["t"] == "pong"
            for _ in range(settings.access.abuse_limit + 1):  # not the client's abuse
                await ws.send_json({"t": "status", "status": "busy"})
                assert (await ws.receive_json(timeout=10))["code"] == "unavailable"
            await ws.send_json({"t": "ping"})
            assert (await ws.receive_json(timeout=5))["t"] == "pong"
            late = await http.ws_connect(c.ws_url("n0", c.ticket("bob", "d", "n0")))
            refused = await late.receive_json(timeout=10)
            assert refused["t"] == "error" and refused["code"] == "unavailable"
            closing = await late.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1011
            # A clear answer, not a hang: the users of a shard that is down are unknown,
            # never offline (issue 14); one user's view names the shard.
            found = await asyncio.wait_for(c.presence.locate(["alice", "bob"]), 10)
            assert found.unknown == {"alice", "bob"} and not found
            with pytest.raises(ShardUnavailable, match="s0"):
                await asyncio.wait_for(c.presence.who("alice"), 10)
            await asyncio.sleep(0.5)  # failed flushes keep the heartbeats for later

            redis.start()  # same port, no data
            deadline = time.monotonic() + 15
            while True:
                await ws.send_json({"t": "ping"})
                assert (await ws.receive_json(timeout=5))["t"] == "pong"
                try:
                    entries = await c.presence.who("alice")
                except Exception:  # the client reconnects to the new server lazily
                    entries = []
                if entries:
                    break
                assert time.monotonic() < deadline, "alice never came back"
                await asyncio.sleep(0.3)
            assert (entries[0].node, entries[0].conn) == ("n0", welcome["conn"])
            assert (await c.presence.counts()).total == 1
            found = await c.presence.locate(["alice", "bob"])  # pooled connections recovered
            assert set(found) == {"alice"} and found["alice"][0].conn == welcome["conn"]
            async with http.get(c.base("n0") + "/healthz") as resp:
                assert resp.status == 200
            await ws.close()
    finally:
        redis.stop()


async def test_a_malformed_stored_value_is_skipped_not_shifting_others(
    redis_servers: list[RedisServer],
) -> None:
    prefix = f"bad{time.monotonic_ns()}:"
    cluster = build_cluster([("s0", redis_servers[0].url, 1)], "redis", 90, key_prefix=prefix)
    try:
        for i in range(3):
            await cluster.online(Presence(f"ok{i}", "d", f"n{i}", f"c{i}"))
        raw = aioredis.Redis.from_url(redis_servers[0].url)
        # The old eight-field record, as a hand edit or another version might leave it.
        await raw.set(f"{prefix}u:old", "old\x1fd\x1fn9\x1fc9\x1f1\x1fonline\x1fr\x1fios")
        await raw.aclose()
        found = await cluster.locate(["ok0", "old", "ok1", "ok2"])
        assert sorted(found) == ["ok0", "ok1", "ok2"]
        assert found.by_node() == {"n0": {"ok0"}, "n1": {"ok1"}, "n2": {"ok2"}}
        # The user can still log in: the bad value is read as nothing and overwritten.
        assert await cluster.online(Presence("old", "d", "n3", "c3")) is None
        found = await cluster.locate(["old", "ok0"])
        assert [(p.node, p.conn) for p in found["old"]] == [("n3", "c3")]
        assert (await cluster.counts()).total == 4
    finally:
        await cluster.close()


async def test_foreign_events_and_counters_are_skipped(redis_servers: list[RedisServer]) -> None:
    prefix = f"ev{time.monotonic_ns()}:"
    cluster = build_cluster([("s0", redis_servers[0].url, 1)], "redis", 90, key_prefix=prefix)
    try:
        shard = cluster.shards["s0"]
        start = await shard.latest_event()
        raw = aioredis.Redis.from_url(redis_servers[0].url)
        await raw.xadd(f"{prefix}ev", {"hello": "world"})  # someone's test entry
        await raw.xadd(f"{prefix}ev", {"k": "online", "u": "x", "d": "d", "n": "n", "t": "soon"})
        await raw.hset(f"{prefix}cnt", "r:mars", "many")
        await raw.aclose()
        await cluster.online(Presence("real", "d", "n1", "c1"))
        events = await shard.read_events(start, 10, 0)
        assert [(e.kind, e.uid) for e in events] == [("online", "real")]
        counts = await cluster.counts()
        assert counts.total == 1 and "mars" not in counts.by_region
    finally:
        await cluster.close()


async def test_event_follower_rides_out_a_shard_restart(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    cluster = build_cluster([("s0", redis.url, 1)], "redis", 90, key_prefix="evr:")
    stop = asyncio.Event()
    seen: list[str] = []

    async def consume() -> None:
        async for event in cluster.events(block_ms=200, stop=stop):
            seen.append(event.uid)

    try:
        follower = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        await cluster.online(Presence("before", "d", "n1", "c1"))
        deadline = time.monotonic() + 5
        while "before" not in seen:
            assert time.monotonic() < deadline, "no event before the restart"
            await asyncio.sleep(0.05)
        redis.kill()
        await asyncio.sleep(1.0)  # the follower's reads fail meanwhile
        assert not follower.done()
        redis.start()  # same port, empty
        deadline = time.monotonic() + 15
        while "after" not in seen:
            assert not follower.done(), follower
            assert time.monotonic() < deadline, "no event after the restart"
            try:
                await cluster.online(Presence("after", "d", "n1", "c2"))
            except BackendUnavailable:
                pass  # the pool reconnects lazily
            await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(follower, 5)
    finally:
        await cluster.close()
        redis.stop()


async def test_heartbeats_reload_a_script_the_shard_forgot(
    redis_servers: list[RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats go out as packed EVALSHA commands, several pipelined for a big batch: a
    shard that lost its scripts (SCRIPT FLUSH, as after a restart) answers NOSCRIPT to the
    first, and the whole batch is sent again once the script is loaded, instead of failing
    as "shard unavailable". Missing entries are named from every chunk."""
    monkeypatch.setattr(redis_store, "TOUCH_CHUNK", 100)
    prefix = f"ns{time.monotonic_ns()}:"
    cluster = build_cluster([("s0", redis_servers[0].url, 1)], "redis", 90, key_prefix=prefix)
    try:
        live = [(f"u{i}", "d", f"c{i}") for i in range(450)]
        await asyncio.gather(*(cluster.online(Presence(u, d, "n1", c)) for u, d, c in live))
        gone = [(f"gone{i}", "d", f"g{i}") for i in range(5)]
        batch = live[:150] + gone[:2] + live[150:] + gone[2:]  # five chunks, gaps in two
        raw = aioredis.Redis.from_url(redis_servers[0].url)
        await raw.script_flush()
        await raw.config_resetstat()
        assert sorted(await cluster.touch(batch)) == sorted(gone)
        stats = await raw.info("commandstats")
        # One ZADD per chunk; a ZMSCORE only where a chunk held someone gone.
        assert stats["cmdstat_zadd"]["calls"] == 5
        assert stats["cmdstat_zmscore"]["calls"] == 2
        deadlines = await raw.zmscore(f"{prefix}exp", [f"{u}\x1f{d}\x1f{c}" for u, d, c in live])
        await raw.aclose()
        floor = (time.time() + 80) * 1000
        assert all(d is not None and d > floor for d in deadlines)
    finally:
        await cluster.close()
