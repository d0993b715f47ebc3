"""Through HAProxy with PROXY v2 against direct connections to the same node, same run.

    python -m load.bench_edge [--idle 4000] [--handshakes 2000] [--runs 3]

One access node process (embedded presence) with a PROXY v2 listener, and Debian's
HAProxy (master-worker, the configuration `imctl lb render` writes for that node). Per
run and per path (direct: the node's own port; haproxy: HAProxy's port for the node):
1. handshakes/s: ``--handshakes`` upgrades, 64 at a time, each waiting for the welcome;
2. idle memory: ``--idle`` idle WebSockets held; KB per connection = node RSS growth /
   connections (HAProxy's worker's RSS growth per connection reported beside it).
A new node process and HAProxy per path and run (the order alternating); medians over
``--runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from control.common.registry import NodeRecord
from control.edge.config import EdgeConfig, EdgeSettings
from control.edge.render import EdgeView, render
from control.testing import HaproxyServer, free_port, spawn_imctl, wait_port
from load.bench_access import KEYS, SECRET, close_clients, open_clients, rss_kb


def start_node(tmp: Path) -> tuple[Any, int, int, int]:
    """The node process, its own port, its PROXY port, and HAProxy's port for it."""
    port, proxy, public = free_port(), free_port(), free_port()
    config = {
        "regions": {"known": ["r"]},
        "heartbeat": {"interval_s": 600, "misses": 3},
        "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
        "access": {
            "nodes": [
                {
                    "id": "n0",
                    "region": "r",
                    "port": port,
                    "proxy_port": proxy,
                    "endpoint": f"ws://127.0.0.1:{public}/ws",
                    "capacity": 20_000,
                }
            ],
            "balancers": ["127.0.0.1/32"],
            "handshake_rate_per_s": 1e6,
            "handshake_burst": 1e6,
            "handshake_rate_per_address_per_s": 1e6,
            "handshake_burst_per_address": 1e6,
        },
        "presence": {"backend": "embedded"},
        "connections": {"max_pending": 20_000, "max_pending_per_address": 20_000},
        "log_level": "warning",
    }
    path = tmp / f"node-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = spawn_imctl(["access", "--config", str(path), "--node-id", "n0"], log=tmp / "node.log")
    wait_port(port, 30)
    wait_port(proxy, 30)
    time.sleep(1.0)
    return proc, port, proxy, public


def start_haproxy(tmp: Path, proxy: int, public: int) -> HaproxyServer:
    server = HaproxyServer(tmp / f"haproxy-{public}")
    record = NodeRecord("n0", f"ws://127.0.0.1:{public}/ws", "r", proxy=f"127.0.0.1:{proxy}")
    config = EdgeConfig(EdgeSettings(first_port=1024, last_port=65535), idle_timeout_s=3600)
    server.config.write_text(render(EdgeView.of([record]), config).text)
    server.start()
    wait_port(public, 15)
    return server


def urls(tmp: Path, port: int, count: int, tag: str) -> Path:
    exp = int(time.time()) + 3600
    path = tmp / f"urls-{tag}.json"
    path.write_text(
        json.dumps(
            [
                f"ws://127.0.0.1:{port}/ws?ticket={KEYS.sign(f'{tag}{i}', 'd', 'n0', exp)}"
                for i in range(count)
            ]
        )
    )
    return path


def worker_pid(haproxy: HaproxyServer) -> int:
    """The current HAProxy worker (it holds the connections; the master does not)."""
    for line in haproxy.show_proc().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == "worker" and fields[2] == "0":
            return int(fields[0])
    raise RuntimeError("no HAProxy worker")


def one_run(tmp: Path, path: str, idle: int, handshakes: int) -> dict[str, float]:
    """A fresh node (and HAProxy) for one path: neither path inherits the other's heap."""
    node, port, proxy, public = start_node(tmp)
    haproxy = start_haproxy(tmp, proxy, public)
    target = port if path == "direct" else public
    try:
        tag = f"{path}{time.time_ns()}-"
        hs = urls(tmp, target, handshakes, tag + "h")
        procs, reports = open_clients(hs, [(0, handshakes)], 64)
        close_clients(procs)
        assert reports[0]["open"] == handshakes, reports
        rate = handshakes / reports[0]["seconds"]
        time.sleep(1.0)  # closed sessions leave
        lb = worker_pid(haproxy)
        before, lb_before = rss_kb(node.pid), rss_kb(lb)
        half = idle // 2
        held = urls(tmp, target, idle, tag + "i")
        procs, reports = open_clients(held, [(0, half), (half, idle - half)], 200)
        time.sleep(2)
        opened = sum(r["open"] for r in reports)
        after, lb_after = rss_kb(node.pid), rss_kb(lb)
        close_clients(procs)
        return {
            "handshakes_per_s": rate,
            "open": opened,
            "node_kb_per_conn": (after - before) / max(opened, 1),
            "haproxy_kb_per_conn": (lb_after - lb_before) / max(opened, 1),
        }
    finally:
        haproxy.stop()
        node.terminate()
        node.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--idle", type=int, default=4_000)
    ap.add_argument("--handshakes", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-edge-"))
    runs: list[dict[str, dict[str, float]]] = []
    for i in range(args.runs):  # alternating which path goes first
        order = ("direct", "haproxy") if i % 2 == 0 else ("haproxy", "direct")
        runs.append({path: one_run(tmp, path, args.idle, args.handshakes) for path in order})
    median = {
        path: {k: statistics.median(r[path][k] for r in runs) for k in runs[0][path]}
        for path in ("direct", "haproxy")
    }
    print(
        json.dumps(
            {
                "runs": runs,
                "median": median,
                "handshake_ratio": round(
                    median["haproxy"]["handshakes_per_s"] / median["direct"]["handshakes_per_s"], 3
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
