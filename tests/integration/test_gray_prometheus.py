"""The canary analysis on a real Prometheus (Debian's ``prometheus``, started by the
``prometheus_server`` fixture) scraping real access nodes in-process: a canary pool (c0) and a
stable pool (s0, s1). The stepper reads its figures through PrometheusSource
(control/gray/figures.py): bad-ticket handshakes to the canary make judge breach and the
stepper roll back; with no traffic at all it pauses as inconclusive."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import aiohttp

from control.common.registry import Registry
from control.gray.analysis import PoolFigures
from control.gray.figures import FiguresMissing, PrometheusSource
from control.gray.model import Release, Target
from control.gray.stepper import Stepper
from control.gray.store import ReleaseStore
from control.testing import Pinger, PrometheusServer, until
from tests.cluster import LocalCluster, cluster_settings
from tests.servers import free_port

CANARY = Target(pool="canary")
WINDOW_S = 60.0
PER_NODE = 8  # good sessions on each node
BAD = 8  # bad-ticket handshakes to the canary
ANALYSIS = {"window_s": WINDOW_S, "min_connections": 5, "min_handshakes": 5}


def pools() -> LocalCluster:
    nodes = [
        {"id": "s0", "region": "north", "zone": "a", "port": free_port(), "pool": "default"},
        {"id": "s1", "region": "north", "zone": "a", "port": free_port(), "pool": "default"},
        {"id": "c0", "region": "north", "zone": "a", "port": free_port(), "pool": "canary"},
    ]
    return LocalCluster(cluster_settings(access={"nodes": nodes}))


def scraping(
    start: Callable[[Iterable[str]], PrometheusServer], cluster: LocalCluster
) -> PrometheusServer:
    return start(f"127.0.0.1:{n.port}" for n in cluster.settings.access.nodes)


def release(name: str) -> Release:
    return Release(
        name=name,
        target=CANARY,
        percent=5.0,
        steps=(5.0, 25.0, 50.0, 100.0),
        step_interval_s=0.001,  # due at once: the figures decide, not the schedule
        analysis=ANALYSIS,
    )


async def figures(source: PrometheusSource) -> tuple[PoolFigures, PoolFigures] | None:
    try:
        return await source.read(CANARY, WINDOW_S)
    except FiguresMissing:
        return None


async def test_canary_handshake_failures_in_prometheus_roll_the_release_back(
    http: aiohttp.ClientSession,
    prometheus_server: Callable[[Iterable[str]], PrometheusServer],
) -> None:
    cluster = pools()
    prom = scraping(prometheus_server, cluster)
    async with cluster:
        prefix = cluster.settings.cluster.prefix
        source = PrometheusSource(Registry(cluster.kv, prefix), prom.url)
        store = ReleaseStore(cluster.kv, prefix)
        await store.create(release("r1"), by="alice")
        # Pinging: an idle session is closed after a few heartbeats, and Prometheus's first
        # scrape comes ~5 s after its start.
        clients = [
            Pinger((await cluster.connect(http, f"u{node}{i}", node))[0], every=0.5)
            for node in ("s0", "s1", "c0")
            for i in range(PER_NODE)
        ]
        for _ in range(BAD):  # refused handshakes on the canary only
            async with http.get(cluster.ws_url("c0", "not-a-ticket")) as resp:
                assert resp.status == 401

        async def seen() -> bool:
            read = await figures(source)
            if read is None:
                return False
            canary, stable = read
            return (
                (canary.nodes, stable.nodes) == (1, 2)
                and canary.connections == PER_NODE
                and stable.connections == 2 * PER_NODE
                and canary.handshake_failures >= BAD * 0.9
            )

        await until(seen, 30.0, "prometheus holding the canary's failed handshakes")
        said = await Stepper(store, source).run_once()
        stored = await store.get("r1")
        assert stored is not None
        assert stored.release.state == "rolled_back", said
        record = (await store.history("r1", limit=1))[-1]
        assert record.action == "analysis" and record.why.startswith("breach"), record
        canary_seen = record.figures["canary"]
        assert canary_seen["handshake_failures"] >= BAD * 0.9, record.figures
        assert record.figures["stable"]["handshake_failures"] == 0, record.figures
        assert all(c.alive for c in clients), [c.other for c in clients if not c.alive]
        for client in clients:
            await client.close()


async def test_no_traffic_in_prometheus_pauses_as_inconclusive(
    prometheus_server: Callable[[Iterable[str]], PrometheusServer],
) -> None:
    cluster = pools()
    prom = scraping(prometheus_server, cluster)
    async with cluster:
        prefix = cluster.settings.cluster.prefix
        source = PrometheusSource(Registry(cluster.kv, prefix), prom.url)
        store = ReleaseStore(cluster.kv, prefix)
        await store.create(release("r2"), by="alice")

        async def scraped() -> bool:  # every node in Prometheus: a read that is not missing
            read = await figures(source)
            return read is not None and (read[0].nodes, read[1].nodes) == (1, 2)

        await until(scraped, 30.0, "prometheus scraping all three nodes")
        said = await Stepper(store, source).run_once()
        stored = await store.get("r2")
        assert stored is not None
        assert (stored.release.state, stored.release.percent) == ("paused", 5.0), said
        record = (await store.history("r2", limit=1))[-1]
        assert record.action == "analysis" and record.why.startswith("inconclusive"), record
