"""Rebalance after scale-out at the issue's size: 3 nodes holding 1,000 clients, 2 new empty
nodes, a scheduler and the controller in process; clients that follow reconnect frames
through the scheduler as real ones do. The leader controller plans the rounds, the hot
nodes shed until max/mean <= 1.1, the cluster-wide move rate never above its limit in any
1 s window (timed where the frames arrive), nobody lost. And the automatic mode: it starts
on its own, reaches its ratio and stops."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest

from control.common.rebalance import NAME, RebalanceRequest, rebalance_plans, rebalance_requests
from control.testing import until
from tests.cluster import LocalCluster, cluster_settings
from tests.servers import free_port
from tests.tokens import as_user

RATE = 50.0
CLIENTS = 1000


class Clients:
    """Simulated clients: each connects, and on a reconnect frame (or a close under it)
    asks the scheduler again and connects where it is sent."""

    def __init__(self, c: LocalCluster, http: aiohttp.ClientSession) -> None:
        self.c, self.http = c, http
        self.told: list[float] = []  # when each reconnect frame arrived
        self.where: dict[str, str] = {}
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.gate = asyncio.Semaphore(100)  # connects at once

    def start(self, uids: Iterable[tuple[str, str]]) -> None:
        self.tasks += [asyncio.create_task(self.client(uid, node)) for uid, node in uids]

    async def _connect(self, uid: str, url: str) -> None:
        async with self.gate:
            # aiohttp's own PINGs are this client's heartbeats.
            ws = await self.http.ws_connect(url, heartbeat=10.0)
            self.sockets[uid] = ws
            assert (await ws.receive_json(timeout=10))["t"] == "welcome"

    async def client(self, uid: str, node: str) -> None:
        await self._connect(uid, self.c.ws_url(node, self.c.ticket(uid, "phone", node)))
        self.where[uid] = node
        port = self.c.settings.scheduler.port
        for _ in range(10):  # bounded: a client is moved a few times at most
            msg = await self.sockets[uid].receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame.get("t") != "reconnect":
                    continue
                assert frame["reason"] == "rebalance"
                self.told.append(time.monotonic())
            # else closed under it: a real client asks the scheduler again, and so this one.
            await self.sockets[uid].close()
            url = (
                f"http://127.0.0.1:{port}/v1/endpoint"
                f"?uid={uid}&device=phone&platform=ios&version=1.0&region=north"
            )
            async with self.http.get(url, headers=as_user(uid)) as resp:
                answer: dict[str, Any] = await resp.json()
            await self._connect(uid, f"{answer['endpoint']}?ticket={answer['ticket']}")
            self.where[uid] = answer["node"]

    def failed(self) -> list[BaseException]:
        return [t.exception() for t in self.tasks if t.done() and t.exception() is not None]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets.values()))

    def peak(self, since: float = 0.0) -> int:
        """The most reconnect frames that arrived in any 1 s window."""
        times = sorted(t for t in self.told if t >= since)
        return max((sum(1 for u in times if t <= u < t + 1) for t in times), default=0)


def five_nodes(**access: Any) -> Any:
    nodes = [
        {"id": f"n{i}", "region": "north", "zone": "a", "port": free_port(), "capacity": 5000}
        for i in range(5)
    ]
    return cluster_settings(
        heartbeat={"interval_s": 10, "misses": 3},
        # 1,000 clients from one address, their upgrades and scheduler calls in flight
        connections={"max_pending": 10_000, "max_pending_per_address": 10_000},
        access={
            "nodes": nodes,
            "reconnect_grace_s": 0.3,
            "drain_s": 2,
            "handshake_rate_per_address_per_s": 10_000,
            "handshake_burst_per_address": 10_000,
            "handshake_rate_per_s": 10_000,
            "handshake_burst": 10_000,
            **access,
        },
    )


def counts(c: LocalCluster) -> list[int]:
    return [len(c.node(f"n{i}").sessions) for i in range(5)]


async def settled(c: LocalCluster, total: int) -> None:
    """Every client connected and every node's load in the registry."""
    await until(lambda: sum(counts(c)) == total, within=30)
    for i in range(5):
        await c.node(f"n{i}").report_once(force=True)


@pytest.mark.timeout(90)
async def test_1000_clients_spread_over_two_new_nodes_at_the_cluster_rate_none_lost(
    http: aiohttp.ClientSession,
) -> None:
    settings = five_nodes()
    async with LocalCluster(settings, scheduler=True, controller=True) as c:
        clients = Clients(c, http)
        clients.start((f"u{i}", f"n{i % 3}") for i in range(CLIENTS))
        await settled(c, CLIENTS)
        assert counts(c)[3:] == [0, 0]
        start = time.monotonic()
        requests = rebalance_requests(c.kv, settings.cluster.prefix)
        await requests.put(RebalanceRequest(RATE, 1.1, time.time(), "test"))

        async def done() -> bool:
            return await requests.get(NAME) is None  # the controller ends it at the ratio

        await until(done, within=50)
        took = time.monotonic() - start
        now = counts(c)
        assert sum(now) == CLIENTS and max(now) * 5 / CLIENTS <= 1.1, now
        assert not clients.failed(), clients.failed()[:3]
        # The cluster-wide rate: never above its limit in any 1 s window.
        peak = clients.peak()
        assert 0 < peak <= RATE, peak
        assert len(clients.told) >= 380  # 3 x 133 had to move, about
        # None lost: every user is online.
        found = await asyncio.gather(*(c.presence.who(f"u{i}") for i in range(CLIENTS)))
        assert all(found), [f"u{i}" for i, f in enumerate(found) if not f][:5]
        assert await rebalance_plans(c.kv, settings.cluster.prefix).get(NAME) is None
        print(f"rebalanced {now} in {took:.1f}s: {len(clients.told)} moved, peak {peak}/s")
        await clients.close()


@pytest.mark.timeout(60)
async def test_the_automatic_mode_starts_on_its_own_reaches_its_ratio_and_stops(
    http: aiohttp.ClientSession,
) -> None:
    auto = {"enabled": True, "trigger_ratio": 1.5, "until_ratio": 1.1, "max_rate": 60}
    settings = five_nodes(rebalance={"auto": {**auto, "check_s": 0.5}})
    async with LocalCluster(settings, scheduler=True, controller=True) as c:
        clients = Clients(c, http)
        clients.start((f"u{i}", "n0") for i in range(150))  # everyone on one node
        await settled(c, 150)
        requests = rebalance_requests(c.kv, settings.cluster.prefix)
        seen: list[str] = []

        async def balanced() -> bool:
            stored = await requests.get(NAME)
            if stored is not None and stored.record is not None:
                seen.append(stored.record.by)
            return stored is None and bool(clients.told) and max(counts(c)) <= 1.1 * 30

        took = await until(balanced, within=30, what="the automatic rebalance to end balanced")
        print(f"auto: balanced {counts(c)} in {took:.1f}s, {len(clients.told)} moved")
        assert set(seen) == {"controller (auto)"}, seen  # nobody else asked
        assert clients.peak() <= 60 and not clients.failed()
        # It stopped and stays stopped: no frame and no new request for more than the
        # time a region must stay hot (1.5 s) plus the rest after a rebalance (3 s).
        moved, ended = len(clients.told), time.monotonic()
        while time.monotonic() - ended < 5.0:
            assert await requests.get(NAME) is None
            await asyncio.sleep(0.25)
        assert len(clients.told) == moved and sum(counts(c)) == 150
        await clients.close()
