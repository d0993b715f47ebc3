"""``imctl load`` against real processes (scheduler, controller, two access nodes on real
etcd and Redis): a short steady run whose report agrees with the cluster's own presence
count, then a storm that kills a node (kill -9 by pid) and reports every client back."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.testing import EtcdServer, RedisServer, spawn_imctl, until
from tests.e2e.system import Cluster, ready

pytestmark = pytest.mark.e2e
CLIENTS = 120


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    redis_servers: list[RedisServer],
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("loadgen"), etcd_server, redis_servers)
    try:
        c.start("controller", "n0", "n1", "scheduler")
        asyncio.run(_ready(c))
        yield c
    finally:
        c.stop_all()


async def _ready(c: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await ready(http, c, {"n0", "n1"})


def _load(c: Cluster, report: Path, *flags: str) -> subprocess.Popen[str]:
    return spawn_imctl(
        [
            "load",
            "--server",
            c.url,
            "--config",
            str(c.config),
            "--clients",
            str(CLIENTS),
            "--workers",
            "2",
            "--report",
            str(report),
            "--no-progress",
            *flags,
        ],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _presence_total(http: aiohttp.ClientSession, c: Cluster) -> int:
    async with http.get(f"{c.url}/v1/presence/count") as resp:
        return int((await resp.json())["total"])


async def _finished(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    out = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, out[0]


def _summary(report: Path) -> dict[str, Any]:
    assert (report / "report.md").is_file()
    for picture in ("connections.png", "handshakes.png", "latency.png"):
        assert (report / picture).stat().st_size > 1000, picture
    return dict(json.loads((report / "summary.json").read_text()))


@pytest.mark.timeout(60)
async def test_a_steady_run_reports_what_the_cluster_counts(
    cluster: Cluster, tmp_path: Path
) -> None:
    report = tmp_path / "steady"
    proc = _load(
        cluster, report, "--duration", "8", "--ramp", "1", "--settle", "3",
        "--message-interval", "1", "--churn", "6",
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:

            async def everyone_online() -> bool:
                return await _presence_total(http, cluster) == CLIENTS

            # The cluster's own count, read by the test while the clients run.
            await until(everyone_online, 20, f"{CLIENTS} online in the cluster's presence")
            code, out = await _finished(proc, 40)
            assert code == 0, out
            d = _summary(report)
            assert d["online_end"] == d["presence_end"] == CLIENTS
            assert sum(d["presence_by_node"].values()) == CLIENTS
            assert d["clients_lost"] == 0
            assert d["counts"]["logouts"] > 0  # churn ran, and everyone came back
            assert d["counts"]["acked"] > 0.9 * d["counts"]["sent"] > 0
            assert d["latency_ms"]["endpoint"]["p99"] is not None
            assert d["counts"]["handshakes"] >= CLIENTS

            async def everyone_left() -> bool:
                return await _presence_total(http, cluster) == 0

            await until(everyone_left, 10, "the generator's clients logged out at its end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
async def test_a_storm_that_kills_a_node_reports_every_client_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    report = tmp_path / "storm"
    pid = cluster.procs["n0"].pid
    proc = _load(
        cluster, report, "--scenario", "storm", "--kill-pid", str(pid), "--at", "3",
        "--duration", "12", "--ramp", "1", "--settle", "5", "--message-interval", "0",
        "--workers", "1",
    )  # fmt: skip
    try:
        code, out = await _finished(proc, 50)
        assert code == 0, out
        assert cluster.procs["n0"].poll() is not None, "n0 was not killed"
        d = _summary(report)
        storm = d["storm"]
        assert storm["online_before"] == CLIENTS
        assert storm["online_lowest"] < CLIENTS
        # Every client the killed node held lost its link, and only those.
        assert storm["reconnects"] == {"lost": storm["by_node_before"]["n0"]}
        assert storm["by_node_before"]["n0"] > 0
        assert storm["recovered_after_s"] is not None
        assert d["online_end"] == d["presence_end"] == CLIENTS
        assert d["presence_by_node"] == {"n1": CLIENTS}
        assert [(x["step"], x["outcome"]) for x in d["steps"]] == [(f"kill pid={pid}", "ok")]
    finally:
        cluster.procs.pop("n0").wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
