"""``imctl load`` against real processes (scheduler, controller, two access nodes on real
etcd and Redis): a short steady run whose report agrees with the cluster's own presence
count, then a storm that kills a node (kill -9 by pid) and reports every client back."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

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


def _summary(report: Path) -> dict[str, Any]:
    assert (report / "report.md").is_file()
    for picture in ("connections.png", "handshakes.png", "latency.png"):
        assert (report / picture).stat().st_size > 1000, picture
    return dict(json.loads((report / "summary.json").read_text()))


class Run(NamedTuple):
    code: int
    output: str
    summary: dict[str, Any]
    killed_pid: int


@pytest.fixture(scope="module")
def storm_run(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One bounded run (the budget allows one): clients that churn and message each other,
    and n0 killed with kill -9 four seconds in."""
    report = tmp_path_factory.mktemp("report")
    pid = cluster.procs["n0"].pid
    proc = _load(
        cluster, report, "--scenario", "storm", "--kill-pid", str(pid), "--at", "4",
        "--duration", "9", "--ramp", "0.5", "--settle", "4", "--message-interval", "1",
        "--churn", "6",
    )  # fmt: skip

    async def watch() -> None:
        async with aiohttp.ClientSession() as http:

            async def everyone_online() -> bool:
                return await _presence_total(http, cluster) == CLIENTS

            # The cluster's own count, read by the test while the clients run.
            await until(everyone_online, 25, f"{CLIENTS} online in the cluster's presence")

    try:
        asyncio.run(watch())
        out, _ = proc.communicate(timeout=40)
        cluster.procs.pop("n0").wait(5)
        return Run(proc.returncode, out, _summary(report), pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
async def test_a_run_reports_what_the_cluster_counts_and_loses_no_client(
    cluster: Cluster, storm_run: Run
) -> None:
    assert storm_run.code == 0, storm_run.output
    d = storm_run.summary
    assert d["online_end"] == d["presence_end"] == CLIENTS
    assert d["presence_by_node"] == {"n1": CLIENTS}
    assert d["clients_lost"] == 0
    assert d["counts"]["logouts"] > 0  # churn ran, and everyone came back
    assert d["counts"]["acked"] > 0.8 * d["counts"]["sent"] > 0
    assert d["latency_ms"]["endpoint"]["p99"] is not None
    assert d["latency_ms"]["message"]["count"] == d["counts"]["acked"]
    async with aiohttp.ClientSession() as http:

        async def everyone_left() -> bool:
            return await _presence_total(http, cluster) == 0

        await until(everyone_left, 10, "the generator's clients logged out at its end")


def test_a_storm_that_kills_a_node_reports_every_client_back(storm_run: Run) -> None:
    assert storm_run.code == 0, storm_run.output
    d = storm_run.summary
    storm = d["storm"]
    # The generator's per-node figures add up (churn, or a slow ramp, has some out).
    assert 0 < storm["online_before"] == sum(storm["by_node_before"].values())
    # The killed node's clients lost their link, and only they (the figure before is the
    # last second's: a login or a logout in the moment before the kill may differ).
    held = storm["by_node_before"]["n0"]
    assert held > 0
    assert set(storm["reconnects"]) == {"lost"}
    assert abs(storm["reconnects"]["lost"] - held) <= CLIENTS // 20
    assert storm["recovered_after_s"] is not None
    assert [(x["step"], x["outcome"]) for x in d["steps"]] == [
        (f"kill pid={storm_run.killed_pid}", "ok")
    ]
