"""The dashboards and alerts against a live cluster: a real Prometheus, configured as
dashboards/prometheus.yml says (a job per process kind, the `cluster` target label, the
viewer token, alerts.yml loaded), scrapes real processes with clients connected. Every
query of every panel and every alert expression is valid and finds the series it names
(a misspelled metric or label fails), every process's /metrics passes `promtool check
metrics`, and the access-node-down alert fires after a node is killed."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

import aiohttp
import pytest
import yaml

from control.testing import EtcdServer, PrometheusServer, RedisServer, until
from dashboards.alert_cases import RULES, rules
from dashboards.build import OUT, queries
from tests.e2e.system import Cluster
from tests.tokens import as_user

pytestmark = pytest.mark.e2e

VIEWER = "viewer-token-for-the-observability-test"
OPERATOR = "operator-token-for-the-observability-test"
CLUSTER = "e2e-obs"
NODES: list[dict[str, Any]] = [
    {"id": "n0", "region": "north", "zone": "a"},
    {"id": "n1", "region": "north", "zone": "b", "pool": "canary", "version": "1.1"},
]
USERS = 12
JOBS = {"imctl-scheduler": ["scheduler"], "imctl-access": ["n0", "n1"], "imctl-controller": []}
# Variables as Grafana substitutes them: "All", then one real value each.
ALL = {"$cluster": ".*", "$region": ".*", "$node": ".*"}
ONE = {"$cluster": CLUSTER, "$region": "north", "$node": "n0"}
RATE = {"$__rate_interval": "5s"}
SELECTOR = re.compile(r"\b(imctl_[a-z0-9_]+|up)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"')
# Series born only at an event this test does not cause, with the labels the code declares
# for them (and those Prometheus adds).
TARGET = {"cluster", "instance", "job"}
LATE = {
    # set at a release's first analysis, which needs minutes of canary traffic
    "imctl_gray_analysis_ratio": {"release", "metric", *TARGET},
}


class Live:
    """The running cluster and the Prometheus scraping it."""

    def __init__(self, cluster: Cluster, prometheus: PrometheusServer) -> None:
        self.c = cluster
        self.prom = prometheus


def prometheus_config(c: Cluster, token_file: Path) -> dict[str, Any]:
    """dashboards/prometheus.yml with this cluster's targets, the viewer token, fast
    scrapes and the alert rules with every ``for`` cut to nothing."""
    config: dict[str, Any] = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "500ms", "scrape_timeout": "500ms"}
    config["global"]["evaluation_interval"] = "500ms"
    for job in config["scrape_configs"]:
        names = JOBS[job["job_name"]] or ["controller"]
        targets = [f"127.0.0.1:{c.ports[n]}" for n in names]
        job["static_configs"] = [{"targets": targets, "labels": {"cluster": CLUSTER}}]
        job["authorization"] = {"credentials_file": str(token_file)}
    return config


def fast_rules() -> str:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    return yaml.safe_dump(doc)


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    redis_servers: list[RedisServer],
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("observability")
    c = Cluster(
        tmp,
        etcd_server,
        redis_servers,
        nodes=NODES,
        admin={
            "metrics": "viewer",
            "tokens": [
                {"name": "grafana", "token": VIEWER, "role": "viewer"},
                {"name": "sre", "token": OPERATOR, "role": "operator"},
            ],
        },
    )
    prom_dir = tmp / "prometheus"
    prom_dir.mkdir()
    token_file = prom_dir / "viewer.token"
    token_file.write_text(VIEWER)
    (prom_dir / RULES.name).write_text(fast_rules())
    prom = PrometheusServer(prom_dir, config=prometheus_config(c, token_file))
    try:
        c.start("controller", "n0", "n1", "scheduler")
        prom.start()
        yield Live(c, prom)
    finally:
        prom.stop()
        c.stop_all()


async def ask(http: aiohttp.ClientSession, prom: PrometheusServer, expr: str) -> list[Any]:
    """An instant query's result; the query must be valid."""
    async with http.post(f"{prom.url}/api/v1/query", data={"query": expr}) as resp:
        body = await resp.json()
    assert body.get("status") == "success", f"{expr}\n  -> {body.get('error')}"
    result: list[Any] = body["data"]["result"]
    return result


async def labels_of(http: aiohttp.ClientSession, prom: PrometheusServer, name: str) -> set[str]:
    """Every label name the series of metric ``name`` carry in Prometheus (none: no series)."""
    async with http.get(f"{prom.url}/api/v1/series", params={"match[]": name}) as resp:
        body = await resp.json()
    return {k for series in body["data"] for k in series}


def fill(expr: str, values: dict[str, str]) -> str:
    for var, value in {**values, **RATE}.items():
        expr = expr.replace(var, value)
    return expr


def exported_name(name: str) -> str:
    """The metric family a sample name belongs to (a histogram's _bucket, _count, _sum)."""
    return re.sub(r"_(bucket|count|sum)$", "", name)


async def check_query(
    http: aiohttp.ClientSession,
    live: Live,
    where: str,
    expr: str,
    exported: set[str],
    need_data: bool = True,
) -> str | None:
    """Fails on an invalid query, a metric no process exports, or a label its series do not
    carry. With ``need_data``, returns why an empty answer is fine (a selector finds nothing:
    the event it counts has not happened) and fails an empty answer that has no such reason;
    None when there is data."""
    events = []
    for match in SELECTOR.finditer(expr):
        name, selector = match[1], match[2] or ""
        assert name == "up" or exported_name(name) in exported or name in exported, (
            f"{where}: no process exports {name}"
        )
        carried = await labels_of(http, live.prom, name) or LATE.get(name, set())
        assert carried, f"{where}: {name} has no series in Prometheus"
        for label in MATCHER.findall(selector):
            assert label in carried, f"{where}: {name} has no label {label!r} ({sorted(carried)})"
        if selector and not await ask(http, live.prom, f"count({name}{selector})"):
            events.append(f"{name}{selector}")
    if await ask(http, live.prom, expr) or not need_data:
        return None
    assert events, f"{where}: {expr} returns nothing though every series it reads exists"
    return f"{where}: no {', '.join(events)} yet"


async def exported_metrics(http: aiohttp.ClientSession, c: Cluster) -> set[str]:
    """The metric families every process exports, each /metrics read with the viewer token
    and passed through `promtool check metrics`."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus"
    names: set[str] = set()
    for proc in ("scheduler", "n0", "n1", "controller"):
        url = f"http://127.0.0.1:{c.ports[proc]}/metrics"
        async with http.get(url) as resp:
            assert resp.status == 401, f"{proc}: /metrics open though admin.metrics is viewer"
        async with http.get(url, headers={"Authorization": f"Bearer {VIEWER}"}) as resp:
            assert resp.status == 200
            text = await resp.text()
        check = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
        )
        out, _ = await asyncio.wait_for(check.communicate(text.encode()), 30)
        assert check.returncode == 0, f"{proc}: promtool check metrics:\n{out.decode()}"
        names |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    return names


async def drive_clients(
    http: aiohttp.ClientSession, c: Cluster
) -> list[aiohttp.ClientWebSocketResponse]:
    """Clients through the scheduler onto the nodes, as real ones come: each pings; one
    sends a bad frame; one logs in twice from the same device (the first is kicked)."""
    sockets = []
    platforms = ("ios", "android", "web")
    for i in range(USERS):
        uid, platform = f"obs-user-{i}", platforms[i % 3]
        query = f"uid={uid}&device=d&platform={platform}&version=1.0.0"
        async with http.get(f"{c.url}/v1/endpoint?{query}", headers=as_user(uid)) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        ws = await http.ws_connect(
            f"{answer['endpoint']}?ticket={answer['ticket']}&platform={platform}"
        )
        assert (await ws.receive_json(timeout=5))["t"] == "welcome"
        await ws.send_json({"t": "ping"})
        sockets.append(ws)
    await sockets[0].send_str("not json")
    again = await http.ws_connect(c.ws("n0", "obs-user-0", device="d"))
    assert (await again.receive_json(timeout=5))["t"] == "welcome"
    sockets.append(again)
    return sockets


async def heartbeats(sockets: list[aiohttp.ClientWebSocketResponse]) -> None:
    for _ in range(120):  # bounded: a minute at most
        for ws in sockets:
            await ws.send_json({"t": "ping"})
        await asyncio.sleep(0.5)


@pytest.mark.timeout(90)
async def test_every_panel_and_alert_query_finds_its_series(live: Live) -> None:
    c, prom = live.c, live.prom
    async with aiohttp.ClientSession() as http:
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        release = {"name": "obs-canary", "target": {"pool": "canary"}, "percent": 50,
                   "state": "running"}  # fmt: skip
        async with http.post(f"{c.url}/v1/gray/releases", json=release, headers=operator) as r:
            assert r.status == 201, await r.text()
        sockets = await drive_clients(http, c)
        # Heartbeats, as clients send them, for as long as the test looks (the first
        # socket was kicked).
        pings = asyncio.create_task(heartbeats(sockets[1:]))
        try:

            async def scraped() -> bool:
                online = await ask(http, prom, f'max(imctl_presence_online{{cluster="{CLUSTER}"}})')
                percent = await ask(http, prom, "imctl_gray_release_percent")
                return bool(online) and float(online[0]["value"][1]) >= USERS and bool(percent)

            await until(scraped, 30, "Prometheus sees every client online and the release")
            await asyncio.sleep(2)  # a few scrapes more: rates over 5 s have their samples
            exported = await exported_metrics(http, c)
            quiet, wrong = [], []
            for board in sorted(OUT.glob("*.json")):
                for title, expr in queries(yaml.safe_load(board.read_text())):
                    for values in (ALL, ONE):
                        where = f"{board.stem}: {title!r} with {values}"
                        try:
                            why = await check_query(http, live, where, fill(expr, values), exported)
                        except AssertionError as exc:
                            wrong.append(str(exc).partition("\nassert")[0])
                            continue
                        if why and values is ALL:
                            quiet.append(why)
            # An alert's expression is silent here by design (nothing is wrong): it must
            # be valid and find every series it reads, not return anything.
            for name, rule in rules().items():
                try:
                    await check_query(http, live, f"alert {name}", rule["expr"], exported, False)
                except AssertionError as exc:
                    wrong.append(str(exc).partition("\nassert")[0])
            assert not wrong, "\n".join(wrong)
        finally:
            pings.cancel()
            await asyncio.gather(pings, return_exceptions=True)
            for ws in sockets:
                await ws.close()
    # With every node and region, a panel is empty only when it reads a series born late.
    assert all(any(late in q for late in LATE) for q in quiet), "\n".join(quiet)


@pytest.mark.timeout(60)
async def test_access_node_down_fires_after_a_node_is_killed(live: Live) -> None:
    c, prom = live.c, live.prom
    target = f"127.0.0.1:{c.ports['n1']}"

    async def firing() -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{prom.url}/api/v1/alerts") as resp,
        ):
            alerts: list[dict[str, Any]] = (await resp.json())["data"]["alerts"]
        return [
            a for a in alerts
            if a["labels"]["alertname"] == "ImctlAccessNodeDown" and a["state"] == "firing"
        ]  # fmt: skip

    assert await firing() == []  # every node up: silent
    c.kill("n1")
    await until(firing, 20, "ImctlAccessNodeDown firing")
    (alert,) = await firing()
    assert alert["labels"]["instance"] == target
    assert alert["labels"]["cluster"] == CLUSTER
    assert alert["annotations"]["runbook"]
