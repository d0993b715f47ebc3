"""TLS against plain on one access node, same client, same run (issue 16).

    python -m load.bench_tls [--idle 5000] [--handshakes 2000] [--runs 3]

One ``imctl access`` process (embedded presence) serves either plain ``ws://`` or
``wss://`` (``access.tls``, an ECDSA P-256 certificate from a CA made here, TLS 1.3);
the two alternate within each run.

1. Handshakes/s: ``--handshakes`` upgrades, 64 at a time, each a new TCP connection (and
   for wss a full TLS handshake, no resumption) waiting for the welcome frame.
2. Idle memory: ``--idle`` WebSockets held by two client processes; RSS per connection =
   (RSS with them - RSS before) / connections, from /proc.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from control.testing import free_port, spawn_imctl, wait_port
from load.bench_access import KEYS, SECRET, rss_kb
from tests.certs import install, issue, make_ca


def node_config(tmp: Path, port: int, tls: dict[str, str] | None) -> Path:
    access: dict[str, Any] = {
        "nodes": [{"id": "n0", "region": "r", "port": port, "capacity": 20_000}],
        "handshake_rate_per_s": 1e6,
        "handshake_burst": 1e6,
        "handshake_rate_per_address_per_s": 1e6,
        "handshake_burst_per_address": 1e6,
    }
    if tls:
        access["tls"] = tls
    config = {
        "regions": {"known": ["r"]},
        "heartbeat": {"interval_s": 600, "misses": 3},
        "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
        "access": access,
        "presence": {"backend": "embedded"},
        "connections": {"max_pending": 20_000, "max_pending_per_address": 20_000},
        "log_level": "warning",
    }
    path = tmp / f"node-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(tmp: Path, tls: dict[str, str] | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = node_config(tmp, port, tls)
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = spawn_imctl(["access", "--config", str(config), "--node-id", "n0"], **quiet)
    wait_port(port, 30)
    time.sleep(1.0)
    return proc, port


def urls(tmp: Path, scheme: str, port: int, count: int) -> Path:
    exp = int(time.time()) + 3600
    tag = time.time_ns()
    path = tmp / f"urls-{scheme}-{tag}.json"
    path.write_text(
        json.dumps(
            [
                f"{scheme}://127.0.0.1:{port}/ws?ticket={KEYS.sign(f'u{tag}-{i}', 'd', 'n0', exp)}"
                for i in range(count)
            ]
        )
    )
    return path


def clients(
    url_file: Path, parts: list[tuple[int, int]], concurrency: int, cafile: str
) -> tuple[list[subprocess.Popen[str]], list[dict[str, float]]]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "load.ws_clients",
                str(url_file),
                str(a),
                str(n),
                str(concurrency),
                cafile,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for a, n in parts
    ]
    return procs, [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]


def release(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
    for p in procs:
        p.wait(60)


def one_run(tmp: Path, tls: dict[str, str] | None, idle: int, handshakes: int) -> dict[str, float]:
    scheme, cafile = ("wss", tls["ca"]) if tls else ("ws", "")
    server, port = start(tmp, tls)
    try:
        procs, reports = clients(urls(tmp, scheme, port, handshakes), [(0, handshakes)], 64, cafile)
        release(procs)
        assert reports[0]["open"] == handshakes, reports
        rate = handshakes / reports[0]["seconds"]
        before = rss_kb(server.pid)
        half = idle // 2
        procs, reports = clients(
            urls(tmp, scheme, port, idle), [(0, half), (half, idle - half)], 200, cafile
        )
        time.sleep(2)
        after = rss_kb(server.pid)
        opened = sum(r["open"] for r in reports)
        release(procs)
        return {"handshakes_per_s": rate, "kb_per_conn": (after - before) / max(opened, 1)}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--idle", type=int, default=5_000)
    ap.add_argument("--handshakes", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-tls-"))
    ca = make_ca(tmp)
    cert, key = issue(ca)
    install(tmp / "cert.pem", cert)
    install(tmp / "key.pem", key)
    tls = {"cert": str(tmp / "cert.pem"), "key": str(tmp / "key.pem"), "ca": str(ca.path)}
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
    for i in range(args.runs):
        order = ("plain", "tls") if i % 2 == 0 else ("tls", "plain")  # alternate the phase
        for kind in order:
            result = one_run(tmp, tls if kind == "tls" else None, args.idle, args.handshakes)
            runs[kind].append(result)
            print(kind, json.dumps(result), file=sys.stderr, flush=True)  # kept if cut short
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("handshakes_per_s", "kb_per_conn")}
        for k, v in runs.items()
    }
    print(
        json.dumps(
            {
                "runs": runs,
                "median": med,
                "handshake_ratio_tls_over_plain": round(
                    med["tls"]["handshakes_per_s"] / med["plain"]["handshakes_per_s"], 3
                ),
                "extra_kb_per_conn_with_tls": round(
                    med["tls"]["kb_per_conn"] - med["plain"]["kb_per_conn"], 2
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
