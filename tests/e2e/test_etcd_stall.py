"""A real etcd frozen (SIGSTOP) and killed under an access node with connected clients.

The reported defect: a 20 s freeze made a node drain itself and rewrite its record ~700
times a second. Watch creates timed out (aetcd's WatchTimeoutError), their late replies were
paired with other watches, the drain mirror got the node's own record events, and every
republish read as a new drain request. And after etcd came back, nodes took 8-14 s to
follow it again (gRPC reconnect backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from control.common.kv.etcd import RECONNECT_MAX_S, EtcdKV
from control.common.mirror import RETRY_MAX_S, PrefixMirror
from control.common.registry import NodeRecord
from control.testing import EtcdServer, Pinger, until
from tests.cluster import LocalCluster, cluster_settings

pytestmark = [pytest.mark.e2e, pytest.mark.etcd]

ETCD_TIMEOUT_S = 1.0  # short, so watch creates time out many times within the freeze
FREEZE_S = 12.0
# The bound the node must meet (item 4 of the issue), plus slack for this test's own
# polling (every 0.05 s) and a loaded 2-core machine running other suites.
RECOVERY_S = 2.0
SLACK_S = 0.5


def etcd_cluster(etcd: EtcdServer, lease_ttl_s: int = 10) -> LocalCluster:
    settings = cluster_settings(
        nodes=1,
        cluster={
            "backend": "etcd",
            "etcd": {"endpoints": [etcd.endpoint], "timeout_s": ETCD_TIMEOUT_S},
        },
        registry={"lease_ttl_s": lease_ttl_s, "verify_s": 2},
    )
    c = LocalCluster(settings)
    c.kv = EtcdKV([etcd.endpoint], timeout_s=ETCD_TIMEOUT_S)
    return c


@contextlib.asynccontextmanager
async def running(mirror: PrefixMirror[Any]) -> AsyncIterator[PrefixMirror[Any]]:
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        await asyncio.wait_for(mirror.synced.wait(), 10)
        yield mirror
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def listing(kv: EtcdKV, prefix: str) -> tuple[dict[str, bytes], int]:
    entries, revision = await kv.range(prefix)
    return {e.key[len(prefix) :]: e.value for e in entries}, revision


def peer(node_id: str) -> bytes:
    return NodeRecord(id=node_id, endpoint=f"ws://{node_id}/ws", region="north").to_json()


@pytest.mark.timeout(90)
async def test_a_frozen_etcd_neither_drains_the_node_nor_floods_etcd(
    own_etcd: EtcdServer, http: aiohttp.ClientSession
) -> None:
    assert own_etcd.proc is not None
    pid = own_etcd.proc.pid
    c = etcd_cluster(own_etcd)
    probe = EtcdKV([own_etcd.endpoint])  # the test's own client, never frozen out
    await probe.connect()
    clients: list[Pinger] = []
    frozen = False
    try:
        # Content for both prefixes: a drain request for another node, and n0's record.
        await probe.put("/imctl/drain/nX", json.dumps({"over_s": 5, "at": 1, "by": "t"}).encode())
        async with c:
            node = c.node("n0")
            # Two more watches on the node's own client (the shared client is where the
            # old watch pairing went wrong), and what each ever showed.
            seen: dict[str, list[Mapping[str, bytes]]] = {"nodes": [], "drain": []}
            nodes = PrefixMirror(c.kv, "/imctl/nodes/", lambda k, v: v, seen["nodes"].append, 2)
            drain = PrefixMirror(c.kv, "/imctl/drain/", lambda k, v: v, seen["drain"].append, 2)
            async with running(nodes), running(drain):
                for i in range(20):
                    ws, _ = await c.connect(http, f"u{i}", "n0")
                    clients.append(Pinger(ws, strict=True))
                assert node.state == "up"
                _, before = await listing(probe, "/imctl/")

                os.kill(pid, signal.SIGSTOP)
                frozen = True
                states: set[str] = set()
                end = time.monotonic() + FREEZE_S
                while time.monotonic() < end:
                    states.add(node.state)
                    await asyncio.sleep(0.1)
                os.kill(pid, signal.SIGCONT)
                frozen = False
                resumed = time.monotonic()

                # The mirrors follow changes again within the bound.
                await probe.put("/imctl/nodes/zz", peer("zz"))
                await probe.put(
                    "/imctl/drain/nY", json.dumps({"over_s": 1, "at": 1, "by": "t"}).encode()
                )

                async def caught_up() -> bool:
                    states.add(node.state)
                    return "zz" in nodes.items and "nY" in drain.items and "zz" in node.peers

                await until(caught_up, RECOVERY_S + SLACK_S, "mirrors following etcd again")
                took = time.monotonic() - resumed

                # A few seconds after: verify passes have run, any re-registration is done.
                settle = time.monotonic() + 5
                while time.monotonic() < settle:
                    states.add(node.state)
                    await asyncio.sleep(0.1)
                want_nodes, _ = await listing(probe, "/imctl/nodes/")
                want_drain, after = await listing(probe, "/imctl/drain/")

                # No drain: the node stayed up, nobody was told to reconnect or cut off.
                assert states == {"up"}, states
                assert all(cl.alive for cl in clients), [cl.other for cl in clients if cl.other]
                assert min(cl.pongs for cl in clients) >= FREEZE_S
                # No write storm: our two puts, the node's re-registration if its lease
                # lapsed in the freeze (grant + put, and a rewrite when its own record was
                # seen gone), a load report or two. The defect wrote thousands.
                # Nodes also write their load every report_interval_s while etcd answers,
                # changed or not: that many more, and no more.
                reports = (time.monotonic() - resumed) / c.settings.access.report_interval_s
                assert after - before <= 15 + reports + 1, f"revision {before} -> {after}"
                # Both mirrors hold what the store holds, and never held another prefix's.
                assert nodes.items == want_nodes and drain.items == want_drain
                assert all(set(v) <= {"nX", "nY"} for v in seen["drain"]), "node ids in drain/"
                assert all(set(v) <= {"n0", "zz"} for v in seen["nodes"]), "drain ids in nodes/"
                assert took <= RECOVERY_S + SLACK_S
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
        for cl in clients:
            await cl.close()
        await probe.close()


@pytest.mark.timeout(90)
async def test_a_node_follows_a_restarted_etcd_within_two_seconds(
    own_etcd: EtcdServer,
) -> None:
    """etcd killed long enough for gRPC's default backoff to grow (1, 1.6, 2.6, 4.1 s ...),
    then started again: the node's lease keepalive and both its mirrors must work again
    within RECOVERY_S of etcd answering."""
    # The defaults this relies on: the channel retries within RECONNECT_MAX_S (+20 %
    # jitter), the mirror and the keepalive retry within a second.
    assert RECONNECT_MAX_S * 1.2 + max(RETRY_MAX_S, 1.0) <= RECOVERY_S
    c = etcd_cluster(own_etcd, lease_ttl_s=6)
    async with c:
        node = c.node("n0")
        kv = c.kv
        refreshed: list[float] = []
        keepalive = kv.keepalive

        async def spy(lease: int) -> int:
            ttl = await keepalive(lease)
            refreshed.append(time.monotonic())
            return ttl

        kv.keepalive = spy  # type: ignore[method-assign]

        async def refreshed_once() -> bool:
            return bool(refreshed)

        await until(refreshed_once, 5, "a first keepalive")

        own_etcd.kill()
        await asyncio.sleep(10)
        own_etcd.start()  # returns once etcd reports itself healthy
        back = time.monotonic()
        probe = EtcdKV([own_etcd.endpoint])
        await probe.connect()
        try:
            await probe.put("/imctl/nodes/zz", peer("zz"))
            request = json.dumps({"over_s": 1, "at": 1, "by": "t"}).encode()
            await probe.put("/imctl/drain/n0", request)

            async def following() -> bool:
                # Keepalive, the peers mirror, the drain mirror (the request drains n0).
                return (
                    any(t > back for t in refreshed)
                    and "zz" in node.peers
                    and node.state == "draining"
                )

            await until(following, 10, "lease and mirrors working again")
            took = time.monotonic() - back
        finally:
            await probe.close()
        assert took <= RECOVERY_S + SLACK_S, f"{took:.2f}s after etcd answered"
