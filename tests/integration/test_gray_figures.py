"""The analysis' figures from real access nodes' own /metrics (control/gray/figures.py),
read through the registry's node records, and the stepper running in the controller part."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from control.common.registry import Registry
from control.gray.figures import NodeMetricsSource
from control.gray.model import Target
from tests.cluster import LocalCluster, cluster_settings
from tests.servers import free_port


def two_pools() -> LocalCluster:
    nodes = [
        {"id": "s0", "region": "north", "zone": "a", "port": free_port(), "pool": "default"},
        {"id": "c0", "region": "north", "zone": "a", "port": free_port(), "pool": "canary"},
    ]
    settings = cluster_settings(access={"nodes": nodes})
    return LocalCluster(settings, controller=True)


async def wait_for(check: object, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_pool_figures_from_the_nodes_own_metrics(http: aiohttp.ClientSession) -> None:
    async with two_pools() as cluster:
        registry = Registry(cluster.kv, cluster.settings.cluster.prefix)
        source = NodeMetricsSource(registry)
        await source.sample()  # the baseline
        assert set(source.nodes) == {"s0", "c0"} and source.unreadable == {}
        sockets = [(await cluster.connect(http, f"u{i}", "c0"))[0] for i in range(3)]
        sockets += [(await cluster.connect(http, f"v{i}", "s0"))[0] for i in range(2)]
        for _ in range(2):  # refused handshakes: a bad ticket, on the canary only
            async with http.get(cluster.ws_url("c0", "nope")) as resp:
                assert resp.status == 401
        await source.sample()
        canary, stable = await source.read(Target(pool="canary"), 60)
        assert (canary.nodes, canary.connections) == (1, 3)
        assert (canary.handshakes, canary.handshake_failures) == (5, 2)
        assert (stable.nodes, stable.connections, stable.handshakes) == (1, 2, 2)
        assert stable.handshake_failures == 0
        for ws in sockets:
            await ws.close()


async def test_the_controller_part_runs_the_stepper() -> None:
    async with two_pools() as cluster:
        controller = next(p for p in cluster.process.parts if p.name == "controller")
        assert controller.supervisor is not None
        await wait_for(lambda: controller.supervisor.alive().get("gray-stepper") is True)
