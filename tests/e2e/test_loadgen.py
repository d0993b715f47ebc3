"""``imctl load`` against real processes (scheduler, controller, four access nodes on real
etcd and Redis), two runs at once on one cluster, each in a region of its own: in the
north a storm that kills a node (kill -9 by pid) while clients churn and message each other,
whose report agrees with the cluster's own presence count and has every client back; in
the south a gray release created, raised, rolled back and deleted while clients run, whose
report shows the connections the rollback moved and no client lost."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import yaml

from control.testing import EtcdServer, RedisServer, spawn_imctl, until
from tests.e2e.system import Cluster, get, ready

pytestmark = pytest.mark.e2e
STORM_CLIENTS = 120
STORM_CHURN = 6.0  # logouts/s over the storm's clients
GRAY_CLIENTS = 80
# The storm run (its pid on the command line): n0 killed at 3 s; churn until 4.5 s, each
# client out for half a second (the churn's logouts all fall before 4.5 s - off_s).
STORM = {
    "scenario": "storm",
    "region": "north",
    "clients": STORM_CLIENTS,
    "workers": 2,
    "duration_s": 7.5,
    "ramp_s": 0.5,
    "settle_s": 3,
    "message_interval_s": 1,
    "churn": {"logouts_per_s": STORM_CHURN, "off_s": 0.5},
    "storm": {"at_s": 3},
}
NODES: list[dict[str, Any]] = [
    {"id": "n0", "region": "north", "zone": "a"},
    {"id": "n1", "region": "north", "zone": "b"},
    {"id": "s0", "region": "south", "zone": "a"},
    {"id": "s1", "region": "south", "zone": "b", "pool": "canary"},
]
# The gray run: the release takes every south user from its first step (the first tick),
# so each client that logs out and back in (churn) lands on the canary s1, until the
# rollback at 3.5 s moves them off.
GRAY = {
    "scenario": "gray",
    "region": "south",
    "uid_prefix": "gray-",
    "clients": GRAY_CLIENTS,
    "workers": 1,
    "duration_s": 7.5,
    "ramp_s": 0.5,
    "settle_s": 2.5,
    "message_interval_s": 1,
    "churn": {"logouts_per_s": 30, "off_s": 0.5},
    "gray": {
        "release": {
            "name": "load-gray",
            "target": {"pool": "canary"},
            "include": {"regions": ["south"]},
            "state": "running",
        },
        "at_s": 0,  # before the first client asks
        "percents": [100],
        "every_s": 0.5,
        "rollback_at_s": 3.5,
        "rollback_over_s": 1,
    },
}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    redis_servers: list[RedisServer],
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("loadgen"), etcd_server, redis_servers, NODES)
    try:
        c.start("controller", *(n["id"] for n in NODES), "scheduler", together=True)
        asyncio.run(_ready(c))
        yield c
    finally:
        c.stop_all()


async def _ready(c: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        await ready(http, c, {n["id"] for n in NODES})


def _load(c: Cluster, report: Path, *flags: str) -> subprocess.Popen[str]:
    return spawn_imctl(
        [
            "load",
            "--server",
            c.url,
            "--config",
            str(c.config),
            "--report",
            str(report),
            "--no-progress",
            *flags,
        ],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _online(http: aiohttp.ClientSession, c: Cluster, region: str | None = None) -> int:
    if region is None:
        return int((await get(http, f"{c.url}/v1/presence/count"))["total"])
    by = await get(http, f"{c.url}/v1/presence/count?by=region")
    return int(by["counts"].get(region, 0))


def _summary(report: Path) -> dict[str, Any]:
    assert (report / "report.md").is_file()
    for picture in ("connections.png", "handshakes.png", "latency.png"):
        assert (report / picture).stat().st_size > 1000, picture
    return dict(json.loads((report / "summary.json").read_text()))


class Run(NamedTuple):
    code: int
    output: str
    summary: dict[str, Any]
    report: Path


class Runs(NamedTuple):
    storm: Run
    gray: Run
    killed_pid: int
    seen_online: int  # the storm region's presence count the test read while it ran


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Both bounded runs at once (the budget allows one run's time): the storm in the
    north with n0 killed with kill -9 three seconds in; the gray release in the south."""
    tmp = tmp_path_factory.mktemp("reports")
    for name, scenario in (("storm", STORM), ("gray", GRAY)):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(scenario))
    pid = cluster.procs["n0"].pid
    storm = _load(cluster, tmp / "storm", "-f", str(tmp / "storm.yaml"), "--kill-pid", str(pid))
    gray = _load(cluster, tmp / "gray", "-f", str(tmp / "gray.yaml"))
    seen = 0

    async def watch() -> None:
        nonlocal seen
        async with aiohttp.ClientSession() as http:

            async def everyone_online() -> bool:
                nonlocal seen
                seen = await _online(http, cluster, "north")
                return seen == STORM_CLIENTS

            # The cluster's own count, read by the test while the clients run.
            await until(everyone_online, 20, f"{STORM_CLIENTS} online in the north's presence")

    try:
        asyncio.run(watch())
        out: dict[str, Run] = {}
        for name, proc in (("storm", storm), ("gray", gray)):
            text, _ = proc.communicate(timeout=40)
            out[name] = Run(proc.returncode, text, _summary(tmp / name), tmp / name)
        cluster.procs.pop("n0").wait(5)
        return Runs(out["storm"], out["gray"], pid, seen)
    finally:
        for proc in (storm, gray):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(60)
async def test_a_run_reports_what_the_cluster_counts_and_loses_no_client(
    cluster: Cluster, runs: Runs
) -> None:
    run = runs.storm
    assert run.code == 0, run.output
    d = run.summary
    assert runs.seen_online == STORM_CLIENTS
    # The generator's count, and the cluster's presence count of the region, both whole.
    assert d["online_end"] == d["presence_end"] == STORM_CLIENTS
    assert d["presence_by_node"].get("n1") == STORM_CLIENTS and "n0" not in d["presence_by_node"]
    assert d["clients_lost"] == 0
    assert d["counts"]["logouts"] > 0  # churn ran, and everyone came back
    assert d["counts"]["acked"] > 0.8 * d["counts"]["sent"] > 0
    assert d["latency_ms"]["endpoint"]["p99"] is not None
    assert d["latency_ms"]["message"]["count"] == d["counts"]["acked"]
    async with aiohttp.ClientSession() as http:

        async def everyone_left() -> bool:
            return await _online(http, cluster) == 0

        await until(everyone_left, 10, "the generators' clients logged out at their end")


def test_a_storm_that_kills_a_node_reports_every_client_back(runs: Runs) -> None:
    run = runs.storm
    assert run.code == 0, run.output
    d = run.summary
    storm = d["storm"]
    assert [(x["step"], x["outcome"]) for x in d["steps"]] == [
        (f"kill pid={runs.killed_pid}", "ok")
    ]
    # The generator's per-node figures add up (churn has some out at any moment).
    before = storm["online_before"]
    assert 0 < before == sum(storm["by_node_before"].values())
    # The killed node's clients lost their link, and only they. The figure before is of a
    # quarter second before the kill (a second more for a worker late to report): clients
    # out then may have come back onto n0 since, and ones on it logged out. That is at
    # most those out plus two seconds of churn.
    held = storm["by_node_before"]["n0"]
    in_flight = STORM_CLIENTS - before + math.ceil(2 * STORM_CHURN)
    assert held > 0
    assert set(storm["reconnects"]) == {"lost"}
    assert abs(storm["reconnects"]["lost"] - held) <= in_flight, (storm, in_flight)
    # The storm was seen, and every client came back (the end's count is whole, above).
    assert storm["online_lowest"] < before
    assert storm["recovered_after_s"] is not None
    assert d["online_end"] == STORM_CLIENTS
    assert "## Reconnect storm" in (run.report / "report.md").read_text()


async def test_a_gray_rollout_and_rollback_moves_clients_and_loses_none(
    cluster: Cluster, runs: Runs
) -> None:
    run = runs.gray
    assert run.code == 0, run.output
    d = run.summary
    assert d["online_end"] == d["presence_end"] == GRAY_CLIENTS
    assert d["clients_lost"] == 0
    assert [(x["step"].split()[0], x["outcome"]) for x in d["steps"]] == [
        ("gray-create", "ok"),
        ("gray-percent", "ok"),
        ("gray-rollback", "ok"),
        ("gray-delete", "ok"),
    ]
    g = d["gray"]
    # Raised to 100 %, the release took the clients that logged in again: onto the canary.
    held = g["by_node_before_rollback"].get("s1", 0)
    assert held > 0, g
    # Nobody moved before the rollback (a raise moves nobody; the release was there before
    # the first client); after it, the canary's clients were told to reconnect, none cut.
    assert g["moved_before_rollback"] == {}
    assert set(g["moved_after_rollback"]) == {"rollback"}
    assert held // 2 <= g["moved_after_rollback"]["rollback"] <= GRAY_CLIENTS
    assert d["reconnects"] == g["moved_after_rollback"]
    text = (run.report / "report.md").read_text()
    assert "## Gray release" in text and "| rollback |" in text
    async with aiohttp.ClientSession() as http:
        assert (await get(http, f"{cluster.url}/v1/gray/releases"))["releases"] == []
