"""Control-plane processes killed with kill -9 while clients are connected. The presence
controller: two run, one leads; kill the leader and the other takes over within the
leader TTL and still takes a dead node's users offline at once (not at the heartbeat
timeout). The scheduler: connected clients never notice, and a restarted scheduler serves
again as soon as it has read the registry."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import pytest

from control.testing import EtcdServer, RedisServer, until
from tests.e2e.system import LEASE_TTL, WINDOW, Cluster, counts_by_node, metrics, ready
from tests.tokens import as_user

pytestmark = pytest.mark.e2e
LEADER_TTL = 2  # the cluster's controller.leader_ttl_s


async def leading(http: aiohttp.ClientSession, c: Cluster, name: str) -> bool:
    try:
        return "imctl_controller_leader 1.0" in await metrics(http, c, name)
    except aiohttp.ClientError:
        return False


@pytest.mark.timeout(120)
async def test_kill_9_the_leading_controller(
    tmp_path: Path, own_etcd: EtcdServer, redis_servers: list[RedisServer]
) -> None:
    c = Cluster(tmp_path, own_etcd, redis_servers)
    try:
        c.start("controller", "controller-b", "n0", "n1", "scheduler")
        async with aiohttp.ClientSession() as http:
            await ready(http, c, {"n0", "n1"})

            async def one_leader() -> bool:
                return [await leading(http, c, n) for n in ("controller", "controller-b")].count(
                    True
                ) == 1

            await until(one_leader, 15, "exactly one controller leading")
            leader = "controller" if await leading(http, c, "controller") else "controller-b"
            standby = "controller-b" if leader == "controller" else "controller"
            sockets = []
            for i in range(10):
                ws = await http.ws_connect(c.ws("n1", f"user-{i}"))
                assert (await ws.receive_json(timeout=5))["t"] == "welcome"
                sockets.append(ws)

            async def on_n1() -> bool:
                return (await counts_by_node(http, c)).get("n1", 0) == 10

            await until(on_n1, 10, "users online on n1")
            c.kill(leader)
            c.kill("n1")  # a dead node while nobody leads
            killed = time.monotonic()

            async def standby_leads() -> bool:
                return await leading(http, c, standby)

            took_over = await until(standby_leads, LEADER_TTL + 8, "the standby leading")
            assert took_over <= LEADER_TTL + 2, f"took over {took_over:.1f}s after kill -9"

            async def gone() -> bool:
                return (await counts_by_node(http, c)).get("n1", 0) == 0

            await until(gone, LEADER_TTL + LEASE_TTL + WINDOW + 10, "n1's users offline")
            elapsed = time.monotonic() - killed
            bound = LEADER_TTL + LEASE_TTL + WINDOW + 2
            assert elapsed <= bound, f"offline {elapsed:.1f}s after kill -9"
            # Taken offline as a dead node's users by the new leader, not expired one by one
            # at the heartbeat timeout.
            text = await metrics(http, c, standby)
            evicted = re.search(r"^imctl_presence_evicted_total (\S+)$", text, re.M)
            assert evicted and float(evicted.group(1)) >= 10, text
            for ws in sockets:
                await ws.close()
    finally:
        c.stop_all()


@pytest.mark.timeout(120)
async def test_kill_9_the_scheduler(
    tmp_path: Path, own_etcd: EtcdServer, redis_servers: list[RedisServer]
) -> None:
    c = Cluster(tmp_path, own_etcd, redis_servers)
    try:
        c.start("controller", "n0", "n1", "scheduler")
        async with aiohttp.ClientSession() as http:
            await ready(http, c, {"n0", "n1"})
            ask = f"{c.url}/v1/endpoint?uid=amy&device=phone&platform=ios&version=1.0"
            async with http.get(ask, headers=as_user("amy")) as resp:
                answer = await resp.json()
            ws = await http.ws_connect(f"{answer['endpoint']}?ticket={answer['ticket']}")
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            c.kill("scheduler")
            for _ in range(3):  # the connection lives on the node, not the scheduler
                await ws.send_json({"t": "ping"})
                assert (await ws.receive_json(timeout=5))["t"] == "pong"
            restarted = time.monotonic()
            c.start("scheduler")
            await ready(http, c, {"n0", "n1"})

            async def serves() -> bool:
                async with http.get(ask, headers=as_user("amy")) as resp:
                    return resp.status == 200

            await until(serves, 10, "the restarted scheduler answering")
            assert time.monotonic() - restarted < 10
            async with http.get(f"{c.url}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{c.url}/v1/presence/amy") as resp:
                assert (await resp.json())["devices"][0]["node"] == answer["node"]
            await ws.close()
    finally:
        c.stop_all()
