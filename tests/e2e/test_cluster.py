"""The whole system as separate real processes on real etcd and real Redis, driven as a
client and an operator would: HTTP to the scheduler, then WebSockets to the nodes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest

from control.testing import EtcdServer, RedisServer, until
from tests.e2e.system import LEASE_TTL, Cluster, counts_by_node, get, ready

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    redis_servers: list[RedisServer],
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("e2e"), etcd_server, redis_servers)
    try:
        c.start("controller", "n0", "n1", "scheduler")
        yield c
    finally:
        c.stop_all()


async def test_ask_connect_online_heartbeat_disconnect(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    c = cluster
    await ready(http, c, {"n0", "n1"})
    answer = await get(
        http,
        f"{c.url}/v1/endpoint?uid=alice&device=phone&platform=ios&version=1.0&region=north",
        "alice",
    )
    assert answer["node"] in ("n0", "n1") and answer["fallbacks"]
    ws = await http.ws_connect(f"{answer['endpoint']}?ticket={answer['ticket']}&platform=ios")
    welcome = await ws.receive_json(timeout=5)
    assert welcome["t"] == "welcome" and welcome["node"] == answer["node"]
    who = await get(http, f"{c.url}/v1/presence/alice")
    assert who["online"] and who["devices"][0]["node"] == answer["node"]
    assert who["devices"][0]["conn"] == welcome["conn"]
    for _ in range(5):  # 10 s of heartbeats across a 6 s timeout
        await ws.send_json({"t": "ping"})
        assert (await ws.receive_json(timeout=3))["t"] == "pong"
        await asyncio.sleep(2)
    assert (await get(http, f"{c.url}/v1/presence/alice"))["online"]
    out = c.imctl("presence", "who", "alice")
    assert out.returncode == 0 and answer["node"] in out.stdout
    await ws.close()

    async def offline() -> bool:
        return not (await get(http, f"{c.url}/v1/presence/alice"))["online"]

    await until(offline, 5, "offline after disconnect")


async def test_other_node_login_kicks_and_stale_disconnect_is_harmless(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    c = cluster
    await ready(http, c, {"n0", "n1"})
    first = await http.ws_connect(c.ws("n0", "bob"))
    w1 = await first.receive_json(timeout=5)
    second = await http.ws_connect(c.ws("n1", "bob"))
    w2 = await second.receive_json(timeout=5)
    kicked = await first.receive_json(timeout=5)
    assert kicked["t"] == "kicked"
    closing = await first.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE
    await asyncio.sleep(1)  # n0's offline for the old conn has run by now
    who = await get(http, f"{c.url}/v1/presence/bob")
    assert [(d["node"], d["conn"]) for d in who["devices"]] == [("n1", w2["conn"])]
    assert w1["conn"] != w2["conn"]
    await second.close()


async def test_drain_moves_1000_clients_at_a_bounded_rate(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    c = cluster
    await ready(http, c, {"n0", "n1"})
    clients = 1000
    told: list[float] = []
    landed: dict[str, str] = {}
    done = asyncio.Event()

    async def ping(ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed and not done.is_set():
            await ws.send_json({"t": "ping"})
            await asyncio.sleep(1.5)

    async def client(i: int) -> None:
        uid = f"drain-{i}"
        ws = await http.ws_connect(c.ws("n0", uid))
        assert (await ws.receive_json(timeout=10))["t"] == "welcome"
        pinger = asyncio.create_task(ping(ws))
        try:
            while True:
                frame = await ws.receive_json(timeout=40)
                if frame["t"] == "reconnect":
                    told.append(time.monotonic())
                    await asyncio.sleep(frame["after_ms"] / 1000)
                    break
        finally:
            pinger.cancel()
            await ws.close()
        answer = await get(
            http,
            f"{c.url}/v1/endpoint?uid={uid}&device=phone&platform=ios&version=1.0&region=north",
            uid,
        )
        ws = await http.ws_connect(f"{answer['endpoint']}?ticket={answer['ticket']}")
        welcome = await ws.receive_json(timeout=10)
        landed[uid] = welcome["node"]
        pinger = asyncio.create_task(ping(ws))
        await done.wait()
        pinger.cancel()
        await ws.close()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]

    async def all_on_n0() -> bool:
        return (await counts_by_node(http, c)).get("n0", 0) >= clients

    await until(all_on_n0, 60, "1000 clients online on n0")
    started = time.monotonic()
    out = c.imctl("access", "drain", "n0", "--over", "10s")
    assert out.returncode == 0, out.stderr

    async def all_moved() -> bool:
        return len(landed) == clients

    try:
        await until(all_moved, 40, "every client reconnected elsewhere")
        counts = await counts_by_node(http, c)
    finally:
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        # n0 back before anything is asserted: the module's later tests need both nodes.
        c.imctl("access", "undrain", "n0")
        await ready(http, c, {"n0", "n1"})
    assert set(landed.values()) == {"n1"}
    assert counts.get("n1", 0) >= clients and counts.get("n0", 0) == 0
    spread = max(told) - started
    per_second = Counter(int(t - started) for t in told)
    assert 8 <= spread <= 14, spread  # spread over the 10 s window
    # drain_max_rate is 150/s; the seconds are binned by when clients read their frames,
    # which a busy test loop shifts by a few (151 seen): all 1,000 at once is far above.
    assert max(per_second.values()) <= 150 * 1.1, per_second


async def test_kill_9_node_users_offline_within_ttl_plus_2s(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    c = cluster
    await ready(http, c, {"n0", "n1"})
    sockets = []
    for i in range(20):
        ws = await http.ws_connect(c.ws("n1", f"victim-{i}"))
        assert (await ws.receive_json(timeout=5))["t"] == "welcome"
        sockets.append(ws)

    async def on_n1() -> bool:
        return (await counts_by_node(http, c)).get("n1", 0) >= 20

    await until(on_n1, 10, "victims online")
    c.kill("n1")
    killed = time.monotonic()

    async def gone() -> bool:
        return (await counts_by_node(http, c)).get("n1", 0) == 0

    elapsed = await until(gone, LEASE_TTL + 6, "victims offline")
    assert elapsed <= LEASE_TTL + 2, f"offline {elapsed:.2f}s after kill -9"
    nodes = await get(http, f"{c.url}/v1/nodes")
    assert "n1" not in {n["id"] for n in nodes["nodes"]}
    for i, ws in enumerate(sockets):  # the clients see the drop and come back elsewhere
        msg = await ws.receive(timeout=5)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
        answer = await get(
            http,
            f"{c.url}/v1/endpoint?uid=victim-{i}&device=phone&platform=ios&version=1.0",
            f"victim-{i}",
        )
        assert answer["node"] == "n0"
        again = await http.ws_connect(f"{answer['endpoint']}?ticket={answer['ticket']}")
        assert (await again.receive_json(timeout=5))["node"] == "n0"
        await again.close()
    assert time.monotonic() - killed < 60
    c.start("n1")  # leave the cluster whole for whatever runs next
