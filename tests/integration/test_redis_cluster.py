"""The Redis Cluster engine while Redis Cluster does its own work: a live reshard of a
third of the slots under logins, logouts, heartbeats and locates, and a master killed
(kill -9) whose replica takes over, presence whole again within one heartbeat interval."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from control.cli.presence import status_text
from control.presence.cluster_engine import RedisClusterPresence
from control.presence.model import Presence
from control.presence.shards import build_cluster
from control.presence.status import presence_status
from control.testing import RedisClusterServer, RedisServer, n_slots, until
from tests.cluster import LocalCluster, cluster_settings

HEARTBEAT_S = 1.0  # the access nodes' interval in these tests


def entry(uid: str, conn: str) -> Presence:
    return Presence(uid, "phone", "n1", conn, region="north", platform="ios")


@pytest.fixture
async def engine(own_redis_cluster: RedisClusterServer) -> AsyncIterator[RedisClusterPresence]:
    e = RedisClusterPresence(
        own_redis_cluster.seeds, timeout_s=60, key_prefix=f"t{uuid.uuid4().hex[:6]}:"
    )
    yield e
    await e.close()


class Clients:
    """What the access nodes hold (uid -> conn), and their part: heartbeats, re-login of
    the connections presence says it lost (the re-assertion), checks against presence."""

    def __init__(self, presence: RedisClusterPresence) -> None:
        self.presence = presence
        self.online: dict[str, str] = {}
        self.gone: set[str] = set()
        self.serial = 0

    async def login(self, n: int) -> None:
        batch = {}
        for _ in range(n):
            self.serial += 1
            batch[f"user-{self.serial}"] = f"c{self.serial}"
        replaced = await asyncio.gather(
            *(self.presence.online(entry(u, c)) for u, c in batch.items())
        )
        assert replaced == [None] * len(batch)
        self.online.update(batch)

    async def logout(self, n: int) -> None:
        uids = random.sample(sorted(self.online), min(n, len(self.online)))
        done = await asyncio.gather(
            *(self.presence.offline(u, "phone", self.online[u]) for u in uids)
        )
        assert all(done), "a logout found no entry"
        for u in uids:
            del self.online[u]
            self.gone.add(u)

    async def heartbeat(self) -> int:
        """One heartbeat batch; the connections presence lost are logged in again."""
        missing = await self.presence.touch((u, "phone", c) for u, c in self.online.items())
        await asyncio.gather(*(self.presence.online(entry(u, c)) for u, _d, c in missing))
        return len(missing)

    async def check(self, uids: list[str]) -> None:
        found = await self.presence.locate(uids)
        assert not found.unknown
        for u in uids:
            if u in self.online:
                assert [p.conn for p in found.get(u, [])] == [self.online[u]], u
            else:
                assert u not in found, f"{u} resurrected"

    async def whole(self) -> bool:
        found = await self.presence.locate(sorted(self.online))
        return set(found) == set(self.online) and not found.unknown


async def test_status_shows_masters_replicas_and_health(
    engine: RedisClusterPresence, own_redis_cluster: RedisClusterServer
) -> None:
    status = await presence_status(engine)
    assert status["engine"] == "redis-cluster" and status["healthy"]
    roles = sorted(m["role"] for m in status["members"])
    assert roles == ["master"] * 3 + ["replica"] * 3
    assert sum(m["slots"] for m in status["members"]) == 16384
    text = status_text(status)
    assert "16384/16384 slots served" in text and text.count("replica") == 3


async def test_ring_status_names_a_shard_that_is_down(tmp_path: Path) -> None:
    up = RedisServer(tmp_path / "up")
    up.start()
    presence = build_cluster(
        [("s0", up.url, 1), ("s1", "redis://127.0.0.1:1/0", 1)], "redis", 30, "st:"
    )
    try:
        status = await presence_status(presence)
    finally:
        await presence.close()
        up.stop()
    assert status["engine"] == "ring" and not status["healthy"]
    health = {m["id"]: m["health"] for m in status["members"]}
    assert health == {"s0": "ok", "s1": "down"}
    assert "DEGRADED" in status_text(status)


async def test_live_reshard_loses_and_double_counts_nothing(
    engine: RedisClusterPresence, own_redis_cluster: RedisClusterServer
) -> None:
    rc = own_redis_cluster
    clients = Clients(engine)
    for _ in range(6):
        await clients.login(500)
    first, target, third = rc.masters()
    before = n_slots(rc, f"127.0.0.1:{target.port}")
    # a third of the slots, half from each other master (each keeps some: it still votes)
    moving = asyncio.create_task(asyncio.to_thread(rc.reshard, [first, third], target, 16384 // 3))
    steps = 0
    while not moving.done() or steps < 3:  # at least a few steps, whatever redis-cli's pace
        await clients.login(50)
        await clients.logout(40)
        assert await clients.heartbeat() == 0  # nobody lost: no re-login needed
        gone = sorted(clients.gone)
        sample = random.sample(sorted(clients.online), 200) + random.sample(
            gone, min(50, len(gone))
        )
        await clients.check(sample)
        steps += 1
        assert steps < 2_000
    await moving
    assert n_slots(rc, f"127.0.0.1:{target.port}") == before + 16384 // 3
    await clients.check(sorted(clients.online) + sorted(clients.gone))
    counts = await engine.counts()
    assert counts.total == len(clients.online) and counts.by_node == {"n1": len(clients.online)}
    assert steps >= 3


async def test_master_killed_replica_takes_over_presence_whole_in_one_heartbeat(
    engine: RedisClusterPresence, own_redis_cluster: RedisClusterServer
) -> None:
    rc = own_redis_cluster
    clients = Clients(engine)
    for _ in range(4):
        await clients.login(500)
    victim = max(rc.masters(), key=lambda s: n_slots(rc, f"127.0.0.1:{s.port}"))
    await clients.login(300)  # the last writes: some may not have reached the replica
    victim.kill()
    t0 = time.monotonic()
    # The access nodes keep beating (their heartbeats to the dead master dropped, counted).
    while victim in rc.masters() or not rc.healthy():
        await clients.heartbeat()
        await asyncio.sleep(HEARTBEAT_S / 4)
        assert time.monotonic() - t0 < 30, "no replica took over"
    failed_over = time.monotonic()

    async def beat_until_whole() -> bool:
        await clients.heartbeat()
        return await clients.whole()

    await until(
        beat_until_whole, HEARTBEAT_S, "presence whole within one heartbeat", HEARTBEAT_S / 4
    )
    assert time.monotonic() - failed_over <= HEARTBEAT_S + 0.5
    counts = await engine.counts()
    assert counts.total == len(clients.online)


async def test_whole_stack_on_the_cluster_engine_and_cli_status(
    redis_cluster: RedisClusterServer,
) -> None:
    """``presence.backend: redis-cluster`` from config: an access node logs a client in
    through the engine, the controller runs beside it, and ``imctl presence status`` and
    ``who`` answer through the scheduler's admin API."""
    presence = {
        "flush_s": 0.1,
        "backend": "redis-cluster",
        "cluster": {"seeds": redis_cluster.seeds[:2], "buckets": 64},
        "key_prefix": f"st{uuid.uuid4().hex[:6]}:",
    }
    # A silent client lives 30 s: the CLI's start alone may take seconds on a busy machine.
    settings = cluster_settings(nodes=1, presence=presence, heartbeat={"interval_s": 10})
    async with (
        LocalCluster(settings, scheduler=True, controller=True) as c,
        aiohttp.ClientSession() as http,
    ):
        server = f"http://127.0.0.1:{settings.scheduler.port}"
        ws, welcome = await c.connect(http, "dave", "n0")

        async def dave_online() -> bool:  # the login may land just after the welcome
            who = await _cli("presence", "who", "dave", "--server", server, "-o", "json")
            return [d["conn"] for d in json.loads(who)["devices"]] == [welcome["conn"]]

        await until(dave_online, 10, "dave online through the engine", 0.2)
        status = await _cli("presence", "status", "--server", server, "--output", "json")
        assert json.loads(status)["engine"] == "redis-cluster"
        assert len(json.loads(status)["members"]) == 6
        assert "slots served" in await _cli("presence", "status", "--server", server)
        await ws.close()


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return out.decode()
