"""Self-preservation with real processes: two of three access nodes killed with kill -9 at
once. The controller holds, as the scheduler does: every user stays online in presence
through the grace period; when it ends, a timer (not the heartbeat sweep, not a registry
change) takes the dead nodes' users offline."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from control.testing import EtcdServer, RedisServer, until
from tests.e2e.system import LEASE_TTL, NODES, Cluster, counts_by_node, metrics, ready

pytestmark = pytest.mark.e2e
GRACE = 5.0
WINDOW = 2.0  # both leases expire within it: "at once"
USERS = 4  # per node


def three_node_cluster(tmp: Path, etcd: EtcdServer, redis: list[RedisServer]) -> Cluster:
    return Cluster(
        tmp,
        etcd,
        redis,
        nodes=[*NODES, {"id": "n2", "region": "south", "zone": "a"}],
        registry={"self_preservation": {"threshold": 0.5, "window_s": WINDOW, "grace_s": GRACE}},
        # A heartbeat timeout (60 s) far beyond the test: only the controller's eviction can
        # take the dead nodes' users offline in time.
        heartbeat={"interval_s": 20, "misses": 3},
    )


@pytest.mark.timeout(120)
async def test_two_of_three_nodes_killed_at_once_are_held_then_evicted(
    tmp_path: Path, own_etcd: EtcdServer, redis_servers: list[RedisServer]
) -> None:
    c = three_node_cluster(tmp_path, own_etcd, redis_servers)
    try:
        c.start("controller", "n0", "n1", "n2", "scheduler")
        async with aiohttp.ClientSession() as http:
            await ready(http, c, {"n0", "n1", "n2"})
            sockets = []
            for node in ("n0", "n1", "n2"):
                for i in range(USERS):
                    ws = await http.ws_connect(c.ws(node, f"{node}-user-{i}"))
                    assert (await ws.receive_json(timeout=5))["t"] == "welcome"
                    sockets.append(ws)
            everyone = {"n0": USERS, "n1": USERS, "n2": USERS}

            async def all_online() -> bool:
                return await counts_by_node(http, c) == everyone

            await until(all_online, 10, "every user online")
            c.kill("n1")
            c.kill("n2")
            killed = time.monotonic()
            # The leases lapse within LEASE_TTL (and at least 2/3 of it, the refresh
            # period, after the kill); the hold runs GRACE from the second lapse. Until
            # GRACE after the kill nobody may be evicted — before, the first lapse was
            # applied at once and its node's users evicted.
            while time.monotonic() < killed + GRACE:
                counts = await counts_by_node(http, c)
                assert counts == everyone, (
                    f"{time.monotonic() - killed:.1f}s after kill -9: {counts}"
                )
                await asyncio.sleep(0.2)

            async def dead_ones_offline() -> bool:
                return await counts_by_node(http, c) == {"n0": USERS}

            await until(dead_ones_offline, LEASE_TTL + GRACE + 10, "the dead nodes' users offline")
            elapsed = time.monotonic() - killed
            assert elapsed <= LEASE_TTL + GRACE + 2, f"offline {elapsed:.1f}s after kill -9"
            text = await metrics(http, c, "controller")
            evicted = re.search(r"^imctl_presence_evicted_total (\S+)$", text, re.M)
            expired = re.search(r"^imctl_presence_expired_total (\S+)$", text, re.M)
            assert evicted and float(evicted.group(1)) == 2 * USERS, text
            assert expired and float(expired.group(1)) == 0, text
            log = c.log("controller").read_text()
            assert "self-preservation: 2/3 nodes vanished at once" in log, log
            for ws in sockets:
                await ws.close()
    finally:
        c.stop_all()
