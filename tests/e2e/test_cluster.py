"""The whole system as separate real processes on real etcd and real Redis, driven as a
client and an operator would: HTTP to the scheduler, then WebSockets to the nodes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from control.common.tickets import TicketKeys
from tests.servers import EtcdServer, RedisServer, free_port, wait_port
from tests.tokens import CLIENT_AUTH, as_user

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-ticket-secret-0123456789"
TOKEN = "e2e-internal-token-0123"
KEYS = TicketKeys({"k": SECRET.encode()}, "k")
LEASE_TTL = 2
WINDOW = 1.0  # registry.self_preservation.window_s


class Cluster:
    def __init__(self, tmp: Path, etcd: EtcdServer, redis: list[RedisServer]) -> None:
        self.tmp = tmp
        self.ports = {name: free_port() for name in ("scheduler", "controller", "n0", "n1")}
        self.prefix = prefix = f"/e2e-{self.ports['scheduler']}"
        config = {
            "cluster": {
                "name": "e2e",
                "backend": "etcd",
                "prefix": prefix,
                "etcd": {"endpoints": [etcd.endpoint]},
            },
            "regions": {
                "known": ["north", "south"],
                "preference": {"north": ["north", "south"], "south": ["south", "north"]},
            },
            "registry": {
                "lease_ttl_s": LEASE_TTL,
                "verify_s": 5,
                # a lone node's loss is final (its users evicted) one window after it vanished
                "self_preservation": {"window_s": WINDOW},
            },
            "heartbeat": {"interval_s": 2, "misses": 3},
            "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
            "client_auth": CLIENT_AUTH,
            "scheduler": {
                "port": self.ports["scheduler"],
                "rebuild_s": 0,
                "rate_limit": {"rate_per_s": 100000, "burst": 100000},
            },
            "access": {
                "nodes": [
                    {"id": "n0", "region": "north", "zone": "a", "port": self.ports["n0"]},
                    {"id": "n1", "region": "north", "zone": "b", "port": self.ports["n1"]},
                ],
                "internal_token": TOKEN,
                "report_interval_s": 0.5,
                "drain_max_rate": 150,
                "handshake_rate_per_s": 5000,
                "handshake_burst": 5000,
                # Its 1,000 clients are all 127.0.0.1: no per-address limits.
                "handshake_rate_per_address_per_s": 5000,
                "handshake_burst_per_address": 5000,
                "reconnect_grace_s": 3,
                "drain_s": 1,
            },
            "presence": {
                "backend": "redis",
                "key_prefix": f"e2e{self.ports['scheduler']}:",
                "flush_s": 0.5,
                "shards": [{"id": f"s{i}", "url": r.url} for i, r in enumerate(redis)],
            },
            "controller": {"port": self.ports["controller"], "leader_ttl_s": 2},
            "connections": {"max_pending_per_address": 4096},
            "log_level": "warning",
        }
        self.config = tmp / "cluster.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = f"http://127.0.0.1:{self.ports['scheduler']}"

    def start(self, name: str) -> None:
        """``scheduler``, a node id, or ``controller`` — and ``controller-<x>`` for more
        controllers of the same cluster, each on a port of its own."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if name.startswith("controller"):
            args = ["controller", "--config", str(self.config)]
            port = self.ports.setdefault(name, free_port())
            env["IMCTL_CONTROLLER__PORT"] = str(port)
        elif name == "scheduler":
            args = ["scheduler", "--config", str(self.config)]
        else:
            args = ["access", "--config", str(self.config), "--node-id", name]
        with open(self.tmp / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "control.cli", *args],
                stdout=log,
                stderr=log,
                cwd=ROOT,
                env=env,
            )
        wait_port(self.ports[name], 20)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def ws(self, node: str, uid: str, device: str = "phone") -> str:
        ticket = KEYS.sign(uid, device, node, int(time.time()) + 60)
        return f"ws://127.0.0.1:{self.ports[node]}/ws?ticket={ticket}"

    def imctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "control.cli", *args, "--server", self.url],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )


async def get(http: aiohttp.ClientSession, url: str, uid: str | None = None) -> Any:
    """GET ``url``'s JSON, proving ``uid`` (for /v1/endpoint) when given."""
    async with http.get(url, headers=as_user(uid) if uid else None) as resp:
        return await resp.json()


async def counts_by_node(http: aiohttp.ClientSession, c: Cluster) -> dict[str, int]:
    return (await get(http, f"{c.url}/v1/presence/count?by=node"))["counts"]


async def until(check: Any, within: float, what: str) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    redis_servers: list[RedisServer],
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("e2e"), etcd_server, redis_servers)
    try:
        for name in ("controller", "n0", "n1", "scheduler"):
            c.start(name)
        yield c
    finally:
        c.stop_all()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def ready(http: aiohttp.ClientSession, c: Cluster, nodes: set[str]) -> None:
    async def check() -> bool:
        try:
            listed = await get(http, f"{c.url}/v1/nodes")
        except aiohttp.ClientError:
            return False
        up = {n["id"] for n in listed["nodes"] if n["state"] == "up"}
        return nodes <= up

    await until(check, 20, f"nodes {sorted(nodes)} up in the scheduler")


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

    await until(all_moved, 40, "every client reconnected elsewhere")
    counts = await counts_by_node(http, c)
    done.set()
    await asyncio.gather(*tasks)
    assert set(landed.values()) == {"n1"}
    assert counts.get("n1", 0) >= clients and counts.get("n0", 0) == 0
    spread = max(told) - started
    per_second = Counter(int(t - started) for t in told)
    assert 8 <= spread <= 14, spread  # spread over the 10 s window
    assert max(per_second.values()) <= 150  # drain_max_rate
    c.imctl("access", "undrain", "n0")
    await ready(http, c, {"n0", "n1"})


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
