"""Gray release benchmarks (issue 15), on real etcd and real processes.

``propagation``: four scheduler processes (``imctl scheduler``, each with its own etcd
watch and its own HTTP listener) on one etcd, with node load reports flowing (``--nodes``
records rewritten every ``--report-s``, so the feed's coalescing window is open most of
the time, as in a deployment). A percent change is written through the release store, as
the admin API writes it (read, compare-and-swap, audit record), alternating 50 <-> 51 %.
For each change: the time from the write (just before its compare-and-swap) to the LAST
scheduler answering ``/v1/endpoint`` with the new rule, polled with a uid whose track
flips between 50 and 51 %: the serving path itself, not the propagation report (which a
scheduler writes at most once a second). Baseline in the same run: one bare watch stream
(aetcd's gRPC stub, the stream each scheduler's mirror sits on), put to event.

``rollback``: a canary (two access node processes of version 2.0) holding ``--connections``
WebSockets from ``--client-procs`` client processes, rolled back ``--over`` a window through
the admin API. Every client follows its reconnect frame: waits its ``after_ms``, asks the
scheduler again and connects to the node it names. Measured: all moved, when the last one
landed, the moves per second over the window, the peak scheduler request rate in 1 s
windows and the scheduler's answers by status (a 503 would be a failure: the per-address
rate limits are raised, every client is 127.0.0.1).

    python -m load.bench_gray propagation [--changes 200] [--runs 3]
    python -m load.bench_gray rollback [--connections 10000] [--over 30] [--runs 1]

The rollback's parent is load/bench_gray_rollback.py, its client processes
load/gray_clients.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from control.common.kv.etcd import EtcdKV
from control.common.registry import NodeRecord, Registry
from control.gray.model import Release, Target, UserContext, Version
from control.gray.store import ReleaseStore
from control.gray.verbs import transition
from control.testing import EtcdServer, free_port, spawn_imctl, wait_port

SECRET = "bench-ticket-secret-0123456789"
TOKEN = "bench-internal-token-0123"
PREFIX = "/bench"
REGION = "north"
QUERY = f"device=phone&platform=ios&version=1.0&region={REGION}"
LOW, HIGH = 50.0, 51.0  # the percents a propagation run alternates between
NO_LIMITS = {"rate_per_s": 1e6, "burst": 1e6}  # every benchmark client is 127.0.0.1


def user(uid: str) -> UserContext:
    return UserContext(uid, "ios", Version.parse("1.0"), REGION)


def release(percent: float) -> Release:
    return Release(name="r1", target=Target(version="2.0"), percent=percent)


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


def base_config(etcd: EtcdServer) -> dict[str, Any]:
    return {
        "cluster": {
            "name": "bench",
            "backend": "etcd",
            "prefix": PREFIX,
            "etcd": {"endpoints": [etcd.endpoint]},
        },
        "regions": {"known": [REGION]},
        "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
        "client_auth": {"mode": "trust"},
        "heartbeat": {"interval_s": 600, "misses": 3},  # the clients here never ping
        "log_level": "warning",
    }


# ---- propagation


async def watch_baseline(etcd: EtcdServer, changes: int) -> list[float]:
    """Put to event on one bare watch stream, ``changes`` times (ms)."""
    kv = EtcdKV(etcd.endpoint)
    await kv.connect()
    key = f"{PREFIX}-baseline/k"
    seen: asyncio.Queue[float] = asyncio.Queue()

    async def watch() -> None:
        async for _ in kv.watch(key, 0):
            seen.put_nowait(time.perf_counter())

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.5)  # the stream created
        found = []
        for i in range(changes):
            started = time.perf_counter()
            await kv.put(key, str(i).encode())
            found.append((await asyncio.wait_for(seen.get(), 5) - started) * 1000)
            await asyncio.sleep(random.uniform(0.02, 0.08))
        return found
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await kv.close()


async def report_load(registry: Registry, nodes: list[NodeRecord], every_s: float) -> None:
    """Every node's load report, each node once per ``every_s``, spread evenly (0: the
    nodes register and stay quiet)."""
    registrations = [await registry.register(n, ttl=600) for n in nodes]
    if every_s <= 0:
        return
    tick = every_s / len(nodes)
    conns = 0
    while True:
        for r in registrations:
            conns += 1
            await r.publish(replace(r.record, conns=conns % 5000))
            await asyncio.sleep(tick)


def flipping_uid() -> str:
    """A uid out of the release at LOW % and in it at HIGH %."""
    low, high = release(LOW), release(HIGH)
    for i in range(1_000_000):  # bounded; about one uid in a hundred flips
        uid = f"flip{i}"
        if not low.matches(user(uid)) and high.matches(user(uid)):
            return uid
    raise RuntimeError("no uid flips between the two percents")


class Poller:
    """One keep-alive HTTP/1.1 connection to one scheduler, asking for the flipping uid:
    a hand-written GET and a substring test, so the measuring side costs far less CPU
    than the schedulers it measures (aiohttp's client cost more per poll than the answer,
    and its round trip set the resolution)."""

    def __init__(self, port: int, uid: str, gap_s: float = 0.0) -> None:
        self.port = port
        self.gap_s = gap_s  # between polls: a scheduler not kept busy by its measurement
        self.request = (
            f"GET /v1/endpoint?uid={uid}&{QUERY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.rtts: list[float] = []

    async def ask(self) -> bytes:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sent = time.perf_counter()
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0])
        body = await self.reader.readexactly(length)
        self.rtts.append(time.perf_counter() - sent)
        # Anything but a 200 (a 503 before the nodes are listed) answers no track.
        return body if head.startswith(b"HTTP/1.1 200") else b""

    async def until(self, track: str, deadline: float) -> tuple[float, float]:
        """Poll until the answer is on ``track``: (when the answering request was sent,
        when its answer arrived): the scheduler switched between the two, or just before."""
        marker = f'"track":"{track}"'.encode()
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            if marker in await self.ask():
                return sent, time.perf_counter()
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
        raise TimeoutError(f"scheduler :{self.port} never answered track {track}")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def propagation_run(
    etcd: EtcdServer,
    ports: list[int],
    changes: int,
    nodes: int,
    report_s: float,
    gap_s: float,
) -> dict[str, Any]:
    kv = EtcdKV(etcd.endpoint)
    await kv.connect()
    store = ReleaseStore(kv, PREFIX)
    key = store.records.key("r1")
    writes: list[float] = []
    cas = kv.compare_and_swap

    async def marked_cas(k: str, value: bytes, expected: int) -> tuple[bool, int]:
        if k == key:
            writes.append(time.perf_counter())
        return await cas(k, value, expected)

    setattr(kv, "compare_and_swap", marked_cas)  # noqa: B010  # the write's instant
    records = [
        NodeRecord(
            id=f"n{i}",
            endpoint=f"ws://127.0.0.1:9/n{i}",
            region=REGION,
            version="2.0" if i % 10 == 0 else "1.0",  # a tenth of the nodes are the canary
            capacity=1_000_000,
        )
        for i in range(nodes)
    ]
    reporter = asyncio.create_task(report_load(Registry(kv, PREFIX), records, report_s))
    uid = flipping_uid()
    pollers = [Poller(p, uid, gap_s) for p in ports]
    latencies: list[float] = []
    first: list[float] = []  # the first scheduler to answer with the new rule
    sent: list[float] = []  # the last scheduler's answering request, sent (a lower bound)
    try:
        stored = await store.get("r1")
        if stored is None:
            stored = await store.create(release(LOW), by="bench")
        deadline = time.perf_counter() + 30
        await asyncio.gather(*(p.until("stable", deadline) for p in pollers))
        await asyncio.sleep(2)  # the load reports under way
        for p in pollers:
            p.rtts.clear()
        for _ in range(changes):
            up = stored.release.percent == LOW
            track = "r1" if up else "stable"
            step = transition(stored.release, "set-percent", {"percent": HIGH if up else LOW})
            deadline = time.perf_counter() + 10
            polls = [asyncio.create_task(p.until(track, deadline)) for p in pollers]
            stored = await store.change(
                "r1", stored.revision, step.release, action="set-percent", by="bench"
            )
            done = await asyncio.gather(*polls)
            latencies.append((max(d[1] for d in done) - writes[-1]) * 1000)
            first.append((min(d[1] for d in done) - writes[-1]) * 1000)
            sent.append((max(d[0] for d in done) - writes[-1]) * 1000)
            # Off any beat the load reports or the feed's window could fall into.
            await asyncio.sleep(random.uniform(0.03, 0.1))
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await kv.close()
        for p in pollers:
            await p.close()
    rtts = [r * 1000 for p in pollers for r in p.rtts]
    return {"latency_ms": latencies, "first_ms": first, "sent_ms": sent, "rtt_ms": rtts}


def propagation(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-gray-"))
    etcd = EtcdServer(tmp / "etcd")
    etcd.start()
    ports = [free_port() for _ in range(args.schedulers)]
    config = base_config(etcd)
    # The deployed default window (rebuild_s 0.05) coalesces the load reports.
    config["scheduler"] = {"rate_limit": NO_LIMITS}
    path = tmp / "gray.yaml"
    path.write_text(yaml.safe_dump(config))
    schedulers = [
        spawn_imctl(
            ["scheduler", "--config", str(path)],
            log=tmp / f"scheduler-{p}.log",
            env={"IMCTL_SCHEDULER__PORT": str(p)},
        )
        for p in ports
    ]
    runs: list[dict[str, Any]] = []
    try:
        for p in ports:
            wait_port(p, 120)  # a loaded machine starts processes slowly
        for _ in range(args.runs):
            base = asyncio.run(watch_baseline(etcd, args.changes))
            found = asyncio.run(
                propagation_run(
                    etcd, ports, args.changes, args.nodes, args.report_s, args.poll_gap_ms / 1000
                )
            )
            runs.append(
                {
                    "imctl_ms": quantiles(found["latency_ms"]),
                    "first_scheduler_ms": quantiles(found["first_ms"]),
                    # The last scheduler's answering request was sent this long after the
                    # write: it switched between this and imctl_ms (a poll's round trip).
                    "last_request_sent_ms": quantiles(found["sent_ms"]),
                    "poll_rtt_ms": quantiles(found["rtt_ms"]),
                    "watch_ms": quantiles(base),
                    "load_average": os.getloadavg()[0],
                }
            )
    finally:
        for s in schedulers:
            s.terminate()
            s.wait(30)
        etcd.stop()
    return {
        "schedulers": args.schedulers,
        "changes_per_run": args.changes,
        "reporting_nodes": args.nodes,
        "report_s": args.report_s,
        "runs": runs,
        "median_p50_ms": statistics.median(r["imctl_ms"]["p50"] for r in runs),
        "median_p99_ms": statistics.median(r["imctl_ms"]["p99"] for r in runs),
        "median_max_ms": statistics.median(r["imctl_ms"]["max"] for r in runs),
        "watch_median_p50_ms": statistics.median(r["watch_ms"]["p50"] for r in runs),
        "watch_median_p99_ms": statistics.median(r["watch_ms"]["p99"] for r in runs),
        "ratio_p99": statistics.median(r["imctl_ms"]["p99"] / r["watch_ms"]["p99"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("propagation")
    p.add_argument("--schedulers", type=int, default=4)
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--nodes", type=int, default=200, help="nodes reporting load")
    p.add_argument(
        "--report-s", type=float, default=1.0, help="each node reports this often (0: never)"
    )
    p.add_argument(
        "--poll-gap-ms",
        type=float,
        default=0.0,
        help="pause between one scheduler's polls (0: back to back)",
    )
    r = sub.add_parser("rollback")
    r.add_argument("--connections", type=int, default=10_000)
    r.add_argument("--over", type=float, default=30.0)
    r.add_argument("--client-procs", type=int, default=4)
    r.add_argument("--max-rate", type=float, default=500.0, help="access.drain_max_rate")
    r.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    if args.what == "propagation":
        found = propagation(args)
    else:  # imported here: the rollback module builds on this one's helpers
        from load.bench_gray_rollback import rollback

        found = rollback(args)
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
