"""Push to a 10k-member group spread over 3 access nodes (separate processes, presence on
real Redis): time until ``push`` returns (every node has written the frames) and until the
last client has read its frame (three client processes).

    python -m load.bench_push [--members 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from control.access.push import Pusher
from control.common.tickets import TicketKeys
from control.presence.cluster import build_cluster
from tests.servers import RedisServer, free_port, wait_port

SECRET = "bench-ticket-secret-0123456789"
TOKEN = "bench-internal-token-0123"
KEYS = TicketKeys({"k": SECRET.encode()}, "k")
NODES = ("n0", "n1", "n2")


async def run(args: argparse.Namespace, tmp: Path, redis: list[RedisServer]) -> list[dict]:  # type: ignore[type-arg]
    ports = {n: free_port() for n in NODES}
    shards = [{"id": f"s{i}", "url": r.url} for i, r in enumerate(redis)]
    config = {
        "regions": {"known": ["r"]},
        "heartbeat": {"interval_s": 600, "misses": 3},
        "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
        "access": {"nodes": [{"id": n, "region": "r", "port": p, "capacity": 20_000}
                             for n, p in ports.items()],
                   "internal_token": TOKEN,
                   "handshake_rate_per_s": 1e6, "handshake_burst": 1e6, "drain_s": 0},
        "presence": {"backend": "redis", "shards": shards, "key_prefix": "push:"},
        "log_level": "warning",
    }
    path = tmp / "push.yaml"
    path.write_text(yaml.safe_dump(config))
    nodes = [subprocess.Popen([sys.executable, "-m", "control.cli", "access", "--config",
                               str(path), "--node-id", n], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for n in NODES]
    presence = build_cluster([(s["id"], s["url"], 1) for s in shards], "redis",
                             timeout_s=1800, key_prefix="push:")
    pusher = Pusher(presence, lambda n: f"http://127.0.0.1:{ports[n]}", TOKEN, timeout_s=10)
    clients: list[subprocess.Popen[str]] = []
    results = []
    try:
        for p in ports.values():
            wait_port(p, 30)
        uids = [f"g{i}" for i in range(args.members)]
        exp = int(time.time()) + 3600
        for k, node in enumerate(NODES):
            mine = [u for i, u in enumerate(uids) if i % 3 == k]
            urls = [f"ws://127.0.0.1:{ports[node]}/ws?ticket={KEYS.sign(u, 'd', node, exp)}"
                    for u in mine]
            f = tmp / f"urls-{node}.json"
            f.write_text(json.dumps(urls))
            clients.append(subprocess.Popen([sys.executable, "-m", "load.push_clients", str(f)],
                                            stdout=subprocess.PIPE, text=True))
        for c in clients:
            json.loads(c.stdout.readline())  # type: ignore[union-attr]
        await asyncio.sleep(1)
        for run_no in range(args.runs):
            if run_no:  # the client processes report once; start fresh ones for each run
                raise RuntimeError("unreachable")
            t = time.perf_counter()
            await presence.locate(uids)
            locate_ms = (time.perf_counter() - t) * 1000
            started = time.time()
            result = await pusher.push(uids, {"t": "bench", "body": "x" * 64})
            returned = time.time()
            reports = [json.loads(c.stdout.readline()) for c in clients]  # type: ignore[union-attr]
            results.append({
                "locate_alone_ms": locate_ms,
                "delivered": result.delivered,
                "offline": len(result.offline),
                "push_returned_ms": (returned - started) * 1000,
                "last_client_read_ms": (max(r["last"] for r in reports) - started) * 1000,
                "received": sum(r["received"] for r in reports),
            })
    finally:
        for c in clients:
            c.terminate()
        for n in nodes:
            n.terminate()
            n.wait(30)
        await pusher.close()
        await presence.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    all_runs = []
    for _ in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-"))
        redis = [RedisServer(tmp / f"r{i}") for i in range(2)]
        for r in redis:
            r.start()
        try:
            one = argparse.Namespace(members=args.members, runs=1)
            all_runs += asyncio.run(run(one, tmp, redis))
        finally:
            for r in redis:
                r.stop()
    print(json.dumps({
        "members": args.members, "nodes": len(NODES), "runs": all_runs,
        "median_push_returned_ms": statistics.median(r["push_returned_ms"] for r in all_runs),
        "median_last_client_read_ms": statistics.median(
            r["last_client_read_ms"] for r in all_runs),
    }, indent=2))


if __name__ == "__main__":
    main()
