"""Signs of life, both ways: a client that keeps its connection with WebSocket protocol
pings is alive (not closed as idle, its presence entry touched), and an idle node's load
report stays as fresh as ``access.report_interval_s``."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from control.common.registry import Registry
from tests.cluster import LocalCluster, cluster_settings


@pytest.mark.timeout(60)
async def test_protocol_pings_are_heartbeats() -> None:
    # Heartbeat timeout 3 s (interval 1 s x 3 misses); the client pings for 4.5 s.
    settings = cluster_settings(nodes=1)
    async with LocalCluster(settings) as c, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(c.ws_url("n0", c.ticket("alice", "phone", "n0")), autoping=False)
        welcome = await ws.receive_json(timeout=5)
        node = c.node("n0")
        session = node.sessions[welcome["conn"]]
        (entry,) = await c.presence.who("alice")
        first_seen, first_local = entry.last_seen, session.last_seen
        pongs = 0
        started = time.monotonic()
        while time.monotonic() - started < 4.5:
            await ws.ping(b"are you there")
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.PONG, (msg, ws.close_code)
            assert msg.data == b"are you there"
            pongs += 1
            await asyncio.sleep(0.5)
        assert not ws.closed, ws.close_code
        assert session.last_seen > first_local + 3
        # The presence entry was touched by the heartbeat flushes (every 0.1 s).
        (entry,) = await c.presence.who("alice")
        assert entry.conn == welcome["conn"] and entry.last_seen > first_seen + 3
        assert pongs >= 8
        # An unsolicited PONG (RFC 6455 5.5.3: a one-way heartbeat) counts too.
        before = time.monotonic()
        await ws.pong(b"")
        deadline = before + 5
        while session.last_seen < before:
            assert time.monotonic() < deadline, "an unsolicited pong was not seen"
            await asyncio.sleep(0.05)
        await ws.close()


@pytest.mark.timeout(60)
async def test_protocol_ping_flood_spends_the_frame_budget() -> None:
    """Pings are not free: past the budget they are refused like any frame (no pong)."""
    settings = cluster_settings(
        nodes=1, access={"frame_rate_per_s": 1, "frame_burst": 3, "abuse_limit": 1000}
    )
    async with LocalCluster(settings) as c, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(c.ws_url("n0", c.ticket("bob", "phone", "n0")), autoping=False)
        await ws.receive_json(timeout=5)
        for _ in range(10):
            await ws.ping(b"x")
        kinds = []
        for _ in range(10):
            msg = await ws.receive(timeout=5)
            kinds.append(msg.type)
        assert kinds.count(aiohttp.WSMsgType.PONG) <= 4, kinds
        assert aiohttp.WSMsgType.TEXT in kinds  # rate_limited error frames
        await ws.close()


@pytest.mark.timeout(60)
async def test_an_idle_node_reports_every_interval() -> None:
    settings = cluster_settings(nodes=1)  # report_interval_s 0.2
    interval = settings.access.report_interval_s
    async with LocalCluster(settings) as c:
        registry = Registry(c.kv, settings.cluster.prefix)
        stamps = []
        for _ in range(8):  # 2 s of a node with nothing changing
            nodes, _rev = await registry.list()
            stamps.append(nodes["n0"].reported_at)
            assert time.time() - nodes["n0"].reported_at < interval + 0.5, stamps
            await asyncio.sleep(0.25)
        assert len(set(stamps)) >= 4, stamps
