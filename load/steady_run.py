"""A steady ``imctl load`` run over a local cluster of separate processes, for the
connection-count benchmark (BENCHMARKS.md, "Load generator"): real etcd and Redis on
loopback, a scheduler, a controller and ``--nodes`` ``imctl access`` processes (each may
open 20,000 descriptors here), then ``imctl load`` with ``--workers`` worker processes.
While it runs, every process's CPU seconds, resident memory and open descriptors are
sampled from /proc, with the machine's load average, into ``resources.json`` beside the
report, so a run that does not hold says what ran out.

    python -m load.steady_run --clients 50000 --nodes 4 --workers 4 --report docs/load-report-50k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from control.testing import (
    EtcdServer,
    RedisServer,
    free_port,
    spawn_imctl,
    stop_processes,
    wait_port,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def config(tmp: Path, etcd: EtcdServer, redis: RedisServer, nodes: int, capacity: int) -> Path:
    ports = {"scheduler": free_port(), "controller": free_port()}
    node_list = [
        {
            "id": f"n{i}",
            "region": "north",
            "zone": f"z{i}",
            "port": free_port(),
            "capacity": capacity,
        }
        for i in range(nodes)
    ]
    data: dict[str, Any] = {
        "cluster": {
            "name": "steady",
            "backend": "etcd",
            "prefix": f"/steady-{ports['scheduler']}",
            "etcd": {"endpoints": [etcd.endpoint]},
        },
        "regions": {"known": ["north"]},
        "tickets": {"active_kid": "k", "keys": {"k": "steady-run-ticket-secret-0123456789"}},
        # The population proves nothing: uids are trusted (a JWT check per ask would be
        # the scheduler's CPU, measured in its own benchmark).
        "client_auth": {"mode": "trust"},
        "scheduler": {
            "port": ports["scheduler"],
            "rate_limit": {"rate_per_s": 100000, "burst": 100000},
        },
        "access": {
            "nodes": node_list,
            "internal_token": "steady-run-internal-token-0123",
            "handshake_rate_per_s": 5000,
            "handshake_burst": 5000,
            # Every simulated client is 127.0.0.1: no per-address limit.
            "handshake_rate_per_address_per_s": 100000,
            "handshake_burst_per_address": 100000,
        },
        "presence": {
            "backend": "redis",
            "key_prefix": f"steady{ports['scheduler']}:",
            "shards": [{"id": "s0", "url": redis.url}],
        },
        "controller": {"port": ports["controller"]},
        "connections": {"max_pending_per_address": 100000},
        "log_level": "warning",
    }
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sample(pid: int) -> dict[str, float] | None:
    """CPU seconds, resident MiB and open descriptors of ``pid`` (None: it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return {"cpu_s": round(cpu, 1), "rss_mib": round(rss / 2**20, 1), "fds": fds}


def descendants(pid: int) -> list[int]:
    """``pid``'s children, theirs, and so on (imctl load runs the generator as a child,
    which forks the workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    out = []
    for child in (int(x) for x in text.split()):
        out += [child, *descendants(child)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50_000)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--capacity", type=int, default=19_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--ramp", type=float, default=120)
    p.add_argument("--duration", type=float, default=240)
    p.add_argument("--settle", type=float, default=30)
    p.add_argument("--message-interval", type=float, default=60)
    p.add_argument("--report", default="load-report-steady")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="steady-run-"))
    report = Path(a.report)
    report.mkdir(parents=True, exist_ok=True)
    etcd = EtcdServer(tmp / "etcd")
    with etcd:
        redis = RedisServer(tmp / "redis")
        redis.start()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            path = config(tmp, etcd, redis, a.nodes, a.capacity)
            cfg = yaml.safe_load(path.read_text())
            url = f"http://127.0.0.1:{cfg['scheduler']['port']}"
            for name, args in [
                ("controller", ["controller"]),
                ("scheduler", ["scheduler"]),
                *((n["id"], ["access", "--node-id", n["id"]]) for n in cfg["access"]["nodes"]),
            ]:
                procs[name] = spawn_imctl([*args, "--config", str(path)], log=tmp / f"{name}.log")
            wait_port(cfg["scheduler"]["port"], 60)
            for n in cfg["access"]["nodes"]:
                wait_port(n["port"], 60)
            time.sleep(3)  # the nodes' first load reports reach the scheduler
            load = spawn_imctl(
                [
                    "load", "--server", url, "--clients", str(a.clients),
                    "--workers", str(a.workers), "--ramp", str(a.ramp),
                    "--duration", str(a.duration), "--settle", str(a.settle),
                    "--message-interval", str(a.message_interval), "--tokens", "none",
                    "--report", str(report), "--no-progress",
                ],
            )  # fmt: skip
            samples: list[dict[str, Any]] = []
            stop = threading.Event()

            def watch() -> None:
                t0 = time.monotonic()
                while not stop.wait(5):
                    row: dict[str, Any] = {
                        "t_s": round(time.monotonic() - t0),
                        "loadavg": os.getloadavg()[0],
                    }
                    for name, proc in procs.items():
                        row[name] = sample(proc.pid)
                    # imctl load, the generator's parent, then its workers.
                    for i, pid in enumerate([load.pid, *descendants(load.pid)]):
                        row[f"load-{i}"] = sample(pid)
                    samples.append(row)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            code = load.wait(a.duration + 600)
            stop.set()
            watcher.join(10)
            (report / "resources.json").write_text(json.dumps(samples, indent=1) + "\n")
            print(f"imctl load exited {code}; report in {report}")
            return code
        finally:
            stop_processes(procs.values())
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
