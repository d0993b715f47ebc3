"""Presence benchmarks on real Redis servers started here (loopback, no persistence).

    python -m load.bench_presence [--runs 5] [--entries 100000]

1. Heartbeat ingest: ``PresenceCluster.touch`` (one Lua call per shard per batch) against a
   naive pipelined per-key write (``SET presence:<uid>:<device> <ts> EX <ttl>`` for every
   heartbeat, one pipeline per batch), same entries, same batches, one Redis shard.
2. Locate: ``locate`` of 10k users spread over 4 shards, grouped by node as the push API
   does (and, separately, with every entry built as a Presence), against one plain
   redis-py ``MGET`` of the same 10k keys (one string key per user, on one server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from control.presence.model import Presence
from control.presence.shards import build_cluster
from control.testing import RedisServer

BATCH = 5_000


async def heartbeat_run(url: str, entries: int, seconds: float) -> dict[str, float]:
    cluster = build_cluster([("s0", url, 1)], "redis", timeout_s=90, key_prefix="hb:")
    shard = cluster.shards["s0"]
    await shard.redis.flushdb()  # type: ignore[attr-defined]
    triples = [(f"u{i}", "phone", f"c{i}") for i in range(entries)]
    # Load entries (not timed) through the real login path, in concurrent chunks.
    for start in range(0, entries, 2000):
        await asyncio.gather(
            *(
                cluster.online(Presence(u, d, "n1", c, region="r", platform="ios"))
                for u, d, c in triples[start : start + 2000]
            )
        )
    naive = aioredis.Redis.from_url(url, decode_responses=True)

    async def ours() -> int:
        sent = 0
        for start in range(0, entries, BATCH):
            batch = triples[start : start + BATCH]
            assert await cluster.touch(batch) == []  # every entry live
            sent += len(batch)
        return sent

    async def baseline() -> int:
        sent = 0
        now = str(time.time())
        for start in range(0, entries, BATCH):
            pipe = naive.pipeline(transaction=False)
            for u, d, _c in triples[start : start + BATCH]:
                pipe.set(f"presence:{u}:{d}", now, ex=90)
            await pipe.execute()
            sent += len(triples[start : start + BATCH])
        return sent

    result = {}
    for name, fn in (("imctl", ours), ("naive", baseline)):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            count += await fn()
        result[name] = count / (time.perf_counter() - started)
    await naive.aclose()
    await cluster.close()
    return result


async def locate_run(urls: list[str], users: int, repeats: int) -> dict[str, float]:
    cluster = build_cluster(
        [(f"s{i}", u, 1) for i, u in enumerate(urls)], "redis", timeout_s=90, key_prefix="loc:"
    )
    uids = [f"user-{i}" for i in range(users)]
    for start in range(0, users, 2000):
        await asyncio.gather(
            *(
                cluster.online(
                    Presence(u, "phone", f"n{i % 3}", f"c{i}", region="r", platform="ios")
                )
                for i, u in enumerate(uids[start : start + 2000], start)
            )
        )
    plain = aioredis.Redis.from_url(urls[0], decode_responses=True)
    await plain.mset({f"loc-plain:{u}": f"n{i % 3}|c{i}" for i, u in enumerate(uids)})
    keys = [f"loc-plain:{u}" for u in uids]
    ours_ms, full_ms, mget_ms = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        found = await cluster.locate(uids)
        by_node = found.by_node()  # what the push API needs
        ours_ms.append((time.perf_counter() - t) * 1000)
        assert sum(len(g) for g in by_node.values()) == users
        t = time.perf_counter()
        found = await cluster.locate(uids)
        assert len(found) == users  # every entry built as a Presence
        full_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        values = await plain.mget(keys)
        mget_ms.append((time.perf_counter() - t) * 1000)
        assert len(values) == users
    await plain.aclose()
    await cluster.close()
    return {
        "imctl_ms": statistics.median(ours_ms),
        "imctl_all_entries_ms": statistics.median(full_ms),
        "mget_ms": statistics.median(mget_ms),
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-"))
    servers = [RedisServer(tmp / f"r{i}") for i in range(4)]
    for s in servers:
        s.start()
    try:
        hb = [
            await heartbeat_run(servers[0].url, args.entries, args.seconds)
            for _ in range(args.runs)
        ]
        loc = [await locate_run([s.url for s in servers], 10_000, 20) for _ in range(args.runs)]
    finally:
        for s in servers:
            s.stop()
    hb_med = {k: statistics.median(r[k] for r in hb) for k in hb[0]}
    loc_med = {k: statistics.median(r[k] for r in loc) for k in loc[0]}
    return {
        "heartbeats": {
            "entries": args.entries,
            "batch": BATCH,
            "runs": hb,
            "median_per_s": hb_med,
            "ratio": round(hb_med["imctl"] / hb_med["naive"], 2),
        },
        "locate_10k_over_4_shards": {
            "runs": loc,
            "median_ms": loc_med,
            "ratio_mget_over_imctl": round(loc_med["mget_ms"] / loc_med["imctl_ms"], 2),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="per heartbeat measurement")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
