"""Access-node benchmarks against a bare aiohttp WebSocket server, same client, same run.

    python -m load.bench_access [--idle 19000] [--handshakes 4000] [--runs 3]
                                [--presence redis|embedded]

1. Idle connections: one node process holds ``--idle`` idle WebSockets (opened by two
   client processes; this machine allows 20,000 descriptors per process); RSS per
   connection = (RSS with them - RSS before) / connections, from /proc.
2. Handshake rate: ``--handshakes`` upgrades (ticket check + presence online on the node),
   64 at a time, each waiting for the first frame.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from control.common.tickets import TicketKeys
from control.testing import RedisServer, free_port, spawn_imctl, wait_port

SECRET = "bench-ticket-secret-0123456789"
KEYS = TicketKeys({"k": SECRET.encode()}, "k")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def node_config(tmp: Path, port: int, presence: str, redis_url: str | None) -> Path:
    config = {
        "regions": {"known": ["r"]},
        "heartbeat": {"interval_s": 600, "misses": 3},
        "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
        "access": {
            "nodes": [{"id": "n0", "region": "r", "port": port, "capacity": 20_000}],
            "handshake_rate_per_s": 1e6,
            "handshake_burst": 1e6,
            # Every benchmark client is 127.0.0.1: no per-address limits.
            "handshake_rate_per_address_per_s": 1e6,
            "handshake_burst_per_address": 1e6,
        },
        "presence": {"backend": presence, "shards": [{"id": "s0", "url": redis_url or ""}]},
        "connections": {"max_pending": 20_000, "max_pending_per_address": 20_000},
        "log_level": "warning",
    }
    path = tmp / f"node-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(
    kind: str, tmp: Path, presence: str, redis_url: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc: subprocess.Popen[bytes]
    if kind == "imctl":
        config = node_config(tmp, port, presence, redis_url)
        proc = spawn_imctl(["access", "--config", str(config), "--node-id", "n0"], **quiet)
    else:
        proc = subprocess.Popen([sys.executable, "-m", "load.bare_ws_server", str(port)], **quiet)
    wait_port(port, 30)
    time.sleep(1.0)
    return proc, port


def url_file(tmp: Path, kind: str, port: int, count: int, tag: str) -> Path:
    exp = int(time.time()) + 3600
    urls = [
        f"ws://127.0.0.1:{port}/ws?ticket={KEYS.sign(f'{tag}{i}', 'd', 'n0', exp)}"
        if kind == "imctl"
        else f"ws://127.0.0.1:{port}/ws"
        for i in range(count)
    ]
    path = tmp / f"urls-{kind}-{tag}.json"
    path.write_text(json.dumps(urls))
    return path


def open_clients(
    urls: Path, parts: list[tuple[int, int]], concurrency: int
) -> tuple[list[subprocess.Popen[str]], list[dict[str, float]]]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "load.ws_clients",
                str(urls),
                str(start),
                str(count),
                str(concurrency),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for start, count in parts
    ]
    reports = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    return procs, reports


def close_clients(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
    for p in procs:
        p.wait(60)


def idle_run(
    kind: str, tmp: Path, n: int, presence: str, redis_url: str | None
) -> dict[str, float]:
    server, port = start_server(kind, tmp, presence, redis_url)
    try:
        before = rss_kb(server.pid)
        urls = url_file(tmp, kind, port, n, f"idle{time.time_ns()}-")
        half = n // 2
        procs, reports = open_clients(urls, [(0, half), (half, n - half)], 200)
        time.sleep(2)
        after = rss_kb(server.pid)
        opened = sum(r["open"] for r in reports)
        close_clients(procs)
        return {
            "open": opened,
            "rss_before_mb": before / 1024,
            "rss_after_mb": after / 1024,
            "kb_per_conn": (after - before) / max(opened, 1),
        }
    finally:
        server.terminate()
        server.wait(30)


def handshake_run(kind: str, tmp: Path, n: int, presence: str, redis_url: str | None) -> float:
    server, port = start_server(kind, tmp, presence, redis_url)
    try:
        urls = url_file(tmp, kind, port, n, f"hs{time.time_ns()}-")
        procs, reports = open_clients(urls, [(0, n)], 64)
        close_clients(procs)
        assert reports[0]["open"] == n, reports
        return n / reports[0]["seconds"]
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--idle", type=int, default=19_000)
    ap.add_argument("--handshakes", type=int, default=4_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--presence", choices=["redis", "embedded"], default="redis")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-"))
    redis = RedisServer(tmp / "redis") if args.presence == "redis" else None
    if redis:
        redis.start()
    url = redis.url if redis else None
    try:
        idle = {
            k: [idle_run(k, tmp, args.idle, args.presence, url) for _ in range(args.runs)]
            for k in ("imctl", "bare")
        }
        rates: dict[str, list[float]] = {"imctl": [], "bare": []}
        for _ in range(args.runs):
            for k in ("bare", "imctl"):
                rates[k].append(handshake_run(k, tmp, args.handshakes, args.presence, url))
    finally:
        if redis:
            redis.stop()
    med_kb = {k: statistics.median(r["kb_per_conn"] for r in v) for k, v in idle.items()}
    med_rate = {k: statistics.median(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "presence": args.presence,
                "pid_fd_limit": os.sysconf("SC_OPEN_MAX"),
                "idle": {"runs": idle, "median_kb_per_conn": med_kb},
                "handshakes": {
                    "runs": rates,
                    "median_per_s": med_rate,
                    "ratio": round(med_rate["imctl"] / med_rate["bare"], 3),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
