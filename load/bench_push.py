"""Push to a 10k-member group spread over 3 access nodes (separate processes, presence on
real Redis): time until ``push`` returns (every node has written the frames) and until the
last client has read its frame (three client processes).

Baseline, in the same run: three bare aiohttp WebSocket servers (``load/bare_ws_server.py
--push``) holding the same sockets for the same client processes, each told at once to
write one frame to every socket it holds: the fan-out with nothing of imctl in it (no
lookup, no uid lists, no authentication), which is what this machine's kernel and two
cores allow.

    python -m load.bench_push [--members 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from control.access.internal import Pusher
from control.common.tickets import TicketKeys
from control.presence.shards import build_cluster
from control.testing import RedisServer, free_port, spawn_imctl, wait_port

SECRET = "bench-ticket-secret-0123456789"
TOKEN = "bench-internal-token-0123"
KEYS = TicketKeys({"k": SECRET.encode()}, "k")
NODES = ("n0", "n1", "n2")


def start_cluster(
    tmp: Path, redis: list[RedisServer], members: int
) -> tuple[list[subprocess.Popen[bytes]], list[subprocess.Popen[str]], dict[str, int], list[str]]:
    """Three node processes and three client processes holding ``members`` sockets."""
    ports = {n: free_port() for n in NODES}
    config = {
        "regions": {"known": ["r"]},
        "heartbeat": {"interval_s": 600, "misses": 3},
        "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
        "access": {
            "nodes": [
                {"id": n, "region": "r", "port": p, "capacity": 20_000} for n, p in ports.items()
            ],
            "internal_token": TOKEN,
            "drain_s": 0,
            "handshake_rate_per_s": 1e6,
            "handshake_burst": 1e6,
            # Every benchmark client is 127.0.0.1: no per-address limits.
            "handshake_rate_per_address_per_s": 1e6,
            "handshake_burst_per_address": 1e6,
        },
        "connections": {"max_pending": 20_000, "max_pending_per_address": 20_000},
        "presence": {
            "backend": "redis",
            "key_prefix": "push:",
            "shards": [{"id": f"s{i}", "url": r.url} for i, r in enumerate(redis)],
        },
        "log_level": "warning",
    }
    path = tmp / "push.yaml"
    path.write_text(yaml.safe_dump(config))
    nodes = [
        spawn_imctl(
            ["access", "--config", str(path), "--node-id", n],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in NODES
    ]
    for p in ports.values():
        wait_port(p, 30)
    uids = [f"g{i}" for i in range(members)]
    exp = int(time.time()) + 3600
    urls = {
        node: [
            f"ws://127.0.0.1:{ports[node]}/ws?ticket={KEYS.sign(u, 'd', node, exp)}"
            for i, u in enumerate(uids)
            if i % 3 == k
        ]
        for k, node in enumerate(NODES)
    }
    return nodes, start_clients(tmp, urls), ports, uids


def start_clients(tmp: Path, urls: dict[str, list[str]]) -> list[subprocess.Popen[str]]:
    """One client process per node, each holding its sockets; returns once all are open."""
    clients = []
    for node, mine in urls.items():
        f = tmp / f"urls-{node}.json"
        f.write_text(json.dumps(mine))
        clients.append(
            subprocess.Popen(
                [sys.executable, "-m", "load.push_clients", str(f)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for c in clients:
        json.loads(c.stdout.readline())  # type: ignore[union-attr]  # "ready"
    return clients


async def last_read(clients: list[subprocess.Popen[str]]) -> tuple[float, int]:
    """When the last client read its frame (epoch seconds), and how many frames were read."""
    loop = asyncio.get_running_loop()
    reports = await asyncio.gather(
        *(loop.run_in_executor(None, c.stdout.readline) for c in clients)  # type: ignore[union-attr]
    )
    found = [json.loads(r) for r in reports]
    return max(f["last"] for f in found), sum(f["received"] for f in found)


def bare_run(tmp: Path, members: int) -> dict[str, float]:
    """The baseline: the same fan-out from three bare servers, started and stopped here."""
    ports = {n: free_port() for n in NODES}
    servers = [
        subprocess.Popen([sys.executable, "-m", "load.bare_ws_server", str(p), "--push"])
        for p in ports.values()
    ]
    clients: list[subprocess.Popen[str]] = []
    try:
        for p in ports.values():
            wait_port(p, 30)
        urls = {
            node: [f"ws://127.0.0.1:{ports[node]}/ws"] * len(range(k, members, len(NODES)))
            for k, node in enumerate(NODES)
        }
        clients = start_clients(tmp, urls)

        async def fan_out() -> dict[str, float]:
            async with aiohttp.ClientSession() as http:
                await asyncio.sleep(1)
                started = time.time()
                written = await asyncio.gather(*(push_bare(http, port) for port in ports.values()))
                last, received = await last_read(clients)
            return {
                "last_client_read_ms": (last - started) * 1000,
                "written": sum(written),
                "received": received,
            }

        return asyncio.run(fan_out())
    finally:
        for p in [*clients, *servers]:
            p.terminate()
            p.wait(30)


async def push_bare(http: aiohttp.ClientSession, port: int) -> int:
    # The frame imctl pushes: protocol.dumps writes compact JSON.
    payload = json.dumps({"t": "bench", "body": "x" * 64}, separators=(",", ":")).encode()
    async with http.post(f"http://127.0.0.1:{port}/push", data=payload) as resp:
        return int((await resp.json())["written"])


async def measure(
    redis: list[RedisServer],
    clients: list[subprocess.Popen[str]],
    ports: dict[str, int],
    uids: list[str],
) -> dict[str, object]:
    presence = build_cluster(
        [(f"s{i}", r.url, 1) for i, r in enumerate(redis)],
        "redis",
        timeout_s=1800,
        key_prefix="push:",
    )
    pusher = Pusher(presence, lambda n: f"http://127.0.0.1:{ports[n]}", TOKEN, timeout_s=10)
    try:
        await asyncio.sleep(1)
        t = time.perf_counter()
        await presence.locate(uids)  # cold ring cache and connections, not timed below
        cold_ms = (time.perf_counter() - t) * 1000
        # Warm, as the push's own will be; before the push: afterwards the clients leave
        # and the nodes are busy taking 10,000 users offline.
        t = time.perf_counter()
        await presence.locate(uids)
        warm_ms = (time.perf_counter() - t) * 1000
        started = time.time()
        result = await pusher.push(uids, {"t": "bench", "body": "x" * 64})
        returned = time.time()
        last, received = await last_read(clients)
        # Each node's time writing the frame to its recipients (this run's only push).
        async with aiohttp.ClientSession() as http:
            writes = {}
            for node, port in ports.items():
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                found = re.search(
                    r"^imctl_access_push_write_seconds_sum\{[^}]*\} (\S+)$", text, re.M
                )
                writes[node] = round(float(found.group(1)) * 1000, 1) if found else None
        return {
            "first_locate_ms": cold_ms,
            "warm_locate_ms": warm_ms,
            "node_write_ms": writes,
            "delivered": result.delivered,
            "offline": len(result.offline),
            "push_returned_ms": (returned - started) * 1000,
            "last_client_read_ms": (last - started) * 1000,
            "received": received,
        }
    finally:
        await pusher.close()
        await presence.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    all_runs = []
    bare_runs = []
    for _ in range(args.runs):
        bare_runs.append(bare_run(Path(tempfile.mkdtemp(prefix="imctl-bench-")), args.members))
        tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-"))
        redis = [RedisServer(tmp / f"r{i}") for i in range(2)]
        for r in redis:
            r.start()
        nodes, clients = [], []
        try:
            nodes, clients, ports, uids = start_cluster(tmp, redis, args.members)
            all_runs.append(asyncio.run(measure(redis, clients, ports, uids)))
        finally:
            for p in [*clients, *nodes]:
                p.terminate()
                p.wait(30)
            for r in redis:
                r.stop()
    print(
        json.dumps(
            {
                "members": args.members,
                "nodes": len(NODES),
                "runs": all_runs,
                "bare_runs": bare_runs,
                "median_push_returned_ms": statistics.median(
                    r["push_returned_ms"] for r in all_runs
                ),
                "median_last_client_read_ms": statistics.median(
                    r["last_client_read_ms"] for r in all_runs
                ),
                "bare_median_last_client_read_ms": statistics.median(
                    r["last_client_read_ms"] for r in bare_runs
                ),
                # Each imctl run over the bare run just before it (the machine's speed drifts).
                "median_pair_ratio": statistics.median(
                    i["last_client_read_ms"] / b["last_client_read_ms"]
                    for i, b in zip(all_runs, bare_runs, strict=True)
                ),
                # Where the time goes: the lookup before any node is asked, and the slowest
                # node's write loop (nodes and client processes share the cores meanwhile).
                "median_warm_locate_ms": statistics.median(r["warm_locate_ms"] for r in all_runs),
                "median_slowest_node_write_ms": statistics.median(
                    max(w for w in r["node_write_ms"].values() if w is not None) for r in all_runs
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
