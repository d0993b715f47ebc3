"""The rollback benchmark's parent (``python -m load.bench_gray rollback``): etcd, Redis, a
scheduler and four access nodes as processes, a canary holding the connections of the
client processes (load/gray_clients.py), rolled back over a window through the admin API;
what it measures is in load/bench_gray.py's docstring and BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from control.testing import EtcdServer, RedisServer, free_port, spawn_imctl, wait_port
from load.bench_gray import NO_LIMITS, QUERY, REGION, TOKEN, base_config, release, user


def canary_uids(count: int, percent: float) -> list[str]:
    rule = release(percent)
    found: list[str] = []
    i = 0
    while len(found) < count:
        uid = f"u{i}"
        if rule.matches(user(uid)):
            found.append(uid)
        i += 1
    return found


def peak_per_window(times: list[float], window_s: float = 1.0) -> int:
    """The most events in any ``window_s`` (sliding, starting at an event)."""
    ordered = sorted(times)
    peak, j = 0, 0
    for i, first in enumerate(ordered):
        while j < len(ordered) and ordered[j] < first + window_s:
            j += 1
        peak = max(peak, j - i)
    return peak


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rollback_run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-gray-"))
    etcd = EtcdServer(tmp / "etcd")
    redis = RedisServer(tmp / "redis")
    etcd.start()
    redis.start()
    names = {"c0": "2.0", "c1": "2.0", "s0": "1.0", "s1": "1.0"}
    ports = {n: free_port() for n in names}
    sched_port = free_port()
    config = base_config(etcd)
    config["scheduler"] = {"port": sched_port, "rate_limit": NO_LIMITS}
    config["access"] = {
        "nodes": [
            {"id": n, "region": REGION, "port": ports[n], "version": v, "capacity": 40_000}
            for n, v in names.items()
        ],
        "internal_token": TOKEN,
        "drain_s": 1,
        "drain_max_rate": args.max_rate,
        "reconnect_grace_s": 10,
        "handshake_rate_per_s": 1e6,
        "handshake_burst": 1e6,
        "handshake_rate_per_address_per_s": 1e6,
        "handshake_burst_per_address": 1e6,
    }
    config["connections"] = {"max_pending": 40_000, "max_pending_per_address": 40_000}
    config["presence"] = {"backend": "redis", "shards": [{"id": "s0", "url": redis.url}]}
    path = tmp / "gray.yaml"
    path.write_text(yaml.safe_dump(config))
    procs = [
        spawn_imctl(["scheduler", "--config", str(path)], log=tmp / "scheduler.log"),
        *(
            spawn_imctl(["access", "--config", str(path), "--node-id", n], log=tmp / f"{n}.log")
            for n in names
        ),
    ]
    clients: list[subprocess.Popen[str]] = []
    base = f"http://127.0.0.1:{sched_port}"
    try:
        for port in [sched_port, *ports.values()]:
            wait_port(port, 120)  # a loaded machine starts processes slowly
        asyncio.run(_admin_ready(base, set(names)))
        created = {"name": "r1", "target": {"version": "2.0"}, "percent": 50}
        asyncio.run(_admin(base, "POST", "/v1/gray/releases", created))
        uids = canary_uids(args.connections, 50)
        share = len(uids) // args.client_procs + 1
        for k in range(args.client_procs):
            spec = tmp / f"clients-{k}.json"
            mine = uids[k * share : (k + 1) * share]
            body = {"scheduler": base, "query": QUERY, "canary": ["c0", "c1"], "uids": mine}
            spec.write_text(json.dumps(body | {"wait_s": args.over + 120}))
            clients.append(
                subprocess.Popen(
                    [sys.executable, "-m", "load.gray_clients", str(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        placed_started = time.time()
        for c in clients:
            json.loads(c.stdout.readline())  # type: ignore[union-attr]  # "ready"
        placed_s = time.time() - placed_started
        counts = asyncio.run(_counts(base))
        time.sleep(2)
        roles = {"scheduler": procs[0], **dict(zip(names, procs[1:], strict=True))}
        roles |= {f"clients{k}": c for k, c in enumerate(clients)}
        cpu_before = {role: cpu_s(p.pid) for role, p in roles.items()}
        started = time.time()
        asyncio.run(_admin(base, "POST", "/v1/gray/releases/r1/rollback", {"over_s": args.over}))
        reports = [json.loads(c.stdout.readline()) for c in clients]  # type: ignore[union-attr]
        # Where the CPU went while the clients moved (what limits the move rate).
        cpu = {role: round(cpu_s(p.pid) - cpu_before[role], 1) for role, p in roles.items()}
        elapsed = time.time() - started
        after = asyncio.run(_counts(base, settled=set(ports) - {"c0", "c1"}))
    finally:
        for c in clients:
            if c.stdin is not None and c.poll() is None:
                c.stdin.write("bye\n")
                c.stdin.flush()
        for c in clients:
            try:
                c.wait(60)
            except subprocess.TimeoutExpired:
                c.kill()
        for p in procs:
            p.terminate()
            p.wait(30)
        redis.stop()
        etcd.stop()
    told = [t for r in reports for t in r["told"]]
    landed = [t for r in reports for t in r["landed"]]
    asks = [t for r in reports for t in r["asks"] if t >= started]
    statuses: Counter[str] = Counter()
    where: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for r in reports:
        statuses.update(r["statuses"])
        where.update(r["where"])
        failures.update(r["failures"])
    per_second = Counter(int(t - started) for t in landed)
    return {
        "connections": len(uids),
        "placed_s": round(placed_s, 1),
        "before": counts,
        "after": after,
        "moved": len(landed),
        "lost": len(uids) - len(landed),
        "failures": dict(failures),
        "landed_on": dict(where),
        "first_told_s": round(min(told) - started, 2),
        "last_told_s": round(max(told) - started, 2),
        "last_landed_s": round(max(landed) - started, 2),
        "moves_per_s": [per_second.get(s, 0) for s in range(int(max(landed) - started) + 1)],
        "peak_moves_1s": peak_per_window(landed),
        "scheduler_requests": len(asks),
        "peak_scheduler_requests_1s": peak_per_window(asks),
        "scheduler_statuses": dict(statuses),
        "cpu_s_during": cpu,
        "cpu_s_total": round(sum(cpu.values()), 1),
        "wall_s_during": round(elapsed, 1),
        "load_average": os.getloadavg()[0],
    }


async def _admin(base: str, method: str, path: str, body: Any) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{base}{path}", json=body) as resp,
    ):
        answer = await resp.json()
        if resp.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {resp.status} {answer}")
        return answer


async def _admin_ready(base: str, nodes: set[str]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # bounded: 30 s
            try:
                async with http.get(f"{base}/v1/nodes") as resp:
                    listed = await resp.json()
                if nodes <= {n["id"] for n in listed["nodes"] if n["state"] == "up"}:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nodes {sorted(nodes)} never up in the scheduler")


async def _counts(base: str, settled: set[str] | None = None) -> dict[str, int]:
    """Online users by node (presence); with ``settled``, until only those hold users."""
    async with aiohttp.ClientSession() as http:
        counts: dict[str, int] = {}
        for _ in range(300):  # bounded: 30 s
            async with http.get(f"{base}/v1/presence/count?by=node") as resp:
                counts = (await resp.json())["counts"]
            if settled is None or not set(k for k, v in counts.items() if v) - settled:
                return counts
            await asyncio.sleep(0.1)
        return counts


def rollback(args: argparse.Namespace) -> dict[str, Any]:
    runs = [rollback_run(args) for _ in range(args.runs)]
    return {
        "over_s": args.over,
        "drain_max_rate": args.max_rate,
        "runs": runs,
        "median_last_landed_s": statistics.median(r["last_landed_s"] for r in runs),
        "median_peak_scheduler_requests_1s": statistics.median(
            r["peak_scheduler_requests_1s"] for r in runs
        ),
    }
