"""Ring resize benchmark (issue 14): 4 -> 5 Redis shards under load, the real Mover on the
real PresenceCluster, against a naive per-key mover measured in the same run.

    python -m load.bench_ring [--users 1000000] [--runs 3] [--batch 5000]

Real redis-servers started here (control.testing: loopback, no persistence). The users
are placed on 4 shards with the mover's own ``adopt`` (no events; the load is not timed).
Two other processes run while it moves, each with its own PresenceCluster that learns
the new ring the way a lagging client does (a fenced shard refuses it, it reloads):

- heartbeats: ``PresenceCluster.touch`` in 5,000-member batches (an access node's batch
  shape), over every user, as fast as one client loop goes;
- lookups: ``locate`` of 1,000 random users at a time, each checked against what must
  be there (every user is online on one known connection the whole time).

Measured: users moved against the ideal (the new shard's weight share), the move rate
(users moved / seconds from the resize to the ring marked stable, and the first pass
alone), failed lookups, the heartbeat rate during the move against the 5 s before it, and
the redis-servers' CPU per moved user (INFO's used_cpu). Baseline: a naive mover of the
same number of users between two other servers: per user GET, SET, DEL, pipelined in
batches (the way Redis's legacy resharding moves keys).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import pickle
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from control.common.kv.embedded import EmbeddedKV
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence
from control.presence.mover import Mover
from control.presence.ring import Ring, RingSpec, ShardSpec
from control.presence.ringstore import MoverControl, RingStore
from control.presence.shards import open_shard_for
from control.testing import RedisServer

PREFIX = "br:"
TIMEOUT_S = 3600.0  # no entry expires during a run
HEARTBEAT_BATCH = 5_000
LOOKUP_BATCH = 1_000
BEFORE_S = 5.0  # heartbeats measured this long before the resize
FILL_CHUNK = 20_000
NAIVE_BATCH = 1_000


def user(i: int) -> Presence:
    return Presence(f"u{i}", "phone", f"n{i % 8}", f"c{i}", 0, "online", f"r{i % 4}", "ios")


def cluster_for(spec: RingSpec, reload: Callable[[], Awaitable[RingSpec | None]] | None) -> Any:
    return PresenceCluster(
        spec, {}, TIMEOUT_S, open_shard=open_shard_for("redis", TIMEOUT_S, PREFIX), reload=reload
    )


def read_ring(path: Path) -> RingSpec:
    spec: RingSpec = pickle.loads(path.read_bytes())
    return spec


def file_reload(path: Path) -> Callable[[], Awaitable[RingSpec | None]]:
    """The ring as the main process last wrote it (the stored ring key, for a process
    that cannot reach the main process's in-memory store)."""

    async def reload() -> RingSpec | None:
        return read_ring(path)

    return reload


# The load processes ----------------------------------------------------------------------


def heartbeats(ring: Path, users: int, stop: Event, out: Connection) -> None:
    async def main() -> list[tuple[float, int, int]]:
        cluster = cluster_for(read_ring(ring), file_reload(ring))
        triples = [(f"u{i}", "phone", f"c{i}") for i in range(users)]
        samples: list[tuple[float, int, int]] = []  # (when, sent, missing)
        at = 0
        while not stop.is_set():
            batch = triples[at : at + HEARTBEAT_BATCH]
            at = (at + HEARTBEAT_BATCH) % users
            missing = await cluster.touch(batch)
            samples.append((time.time(), len(batch), len(missing)))
        await cluster.close()
        return samples

    out.send(asyncio.run(main()))


def lookups(ring: Path, users: int, stop: Event, out: Connection) -> None:
    async def main() -> tuple[list[tuple[float, int, int]], list[str]]:
        cluster = cluster_for(read_ring(ring), file_reload(ring))
        rnd = random.Random(7)
        samples: list[tuple[float, int, int]] = []  # (when, looked up, failed)
        examples: list[str] = []
        while not stop.is_set():
            ids = rnd.sample(range(users), LOOKUP_BATCH)
            found = await cluster.locate([f"u{i}" for i in ids])
            failed = 0
            for i in ids:
                got = found.get(f"u{i}", [])
                if [p.conn for p in got] != [f"c{i}"] or f"u{i}" in found.unknown:
                    failed += 1
                    if len(examples) < 10:
                        examples.append(f"u{i}: {got} (version {cluster.spec.version})")
            samples.append((time.time(), len(ids), failed))
        await cluster.close()
        return samples, examples

    out.send(asyncio.run(main()))


# The run ---------------------------------------------------------------------------------


async def fill(cluster: Any, users: int) -> None:
    now_ms = int(time.time() * 1000)
    deadline = now_ms + int(TIMEOUT_S * 1000)
    for start in range(0, users, FILL_CHUNK):
        by_owner: dict[str, list[tuple[Presence, int]]] = {}
        for i in range(start, min(users, start + FILL_CHUNK)):
            p = user(i)
            by_owner.setdefault(cluster.ring.owner(p.uid), []).append((p, deadline))
        await asyncio.gather(
            *(
                cluster.shards[sid].adopt(group, now_ms, ring_version=1)
                for sid, group in by_owner.items()
            )
        )


async def redis_cpu(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        client = aioredis.Redis.from_url(url)
        info = await client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        await client.aclose()
    return total


async def naive_move(src_url: str, dst_url: str, values: list[tuple[str, str]]) -> float:
    """Users moved per second by GET/SET/DEL per key, pipelined per batch (as legacy
    resharding moves keys); the keys are loaded first (not timed)."""
    src = aioredis.Redis.from_url(src_url, decode_responses=True)
    dst = aioredis.Redis.from_url(dst_url, decode_responses=True)
    await src.flushdb()
    await dst.flushdb()
    for start in range(0, len(values), 10_000):
        await src.mset(dict(values[start : start + 10_000]))
    keys = [k for k, _ in values]
    started = time.perf_counter()
    for start in range(0, len(keys), NAIVE_BATCH):
        chunk = keys[start : start + NAIVE_BATCH]
        pipe = src.pipeline(transaction=False)
        for k in chunk:
            pipe.get(k)
        got = await pipe.execute()
        pipe = dst.pipeline(transaction=False)
        for k, v in zip(chunk, got, strict=True):
            pipe.set(k, v)
        await pipe.execute()
        pipe = src.pipeline(transaction=False)
        for k in chunk:
            pipe.delete(k)
        await pipe.execute()
    elapsed = time.perf_counter() - started
    assert await dst.dbsize() == len(keys) and await src.dbsize() == 0
    await src.aclose()
    await dst.aclose()
    return len(keys) / elapsed


def rate(samples: list[tuple[float, int, int]], start: float, end: float) -> float:
    sent = sum(n for t, n, _ in samples if start < t <= end)
    return sent / (end - start) if end > start else 0.0


async def one_run(servers: list[RedisServer], users: int, batch: int, work: Path) -> dict[str, Any]:
    urls = [s.url for s in servers]
    for url in urls:
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()
    old = RingSpec(1, tuple(ShardSpec(f"s{i}", urls[i], 1) for i in range(4)), vnodes=160)
    ring_file = work / "ring.pickle"
    ring_file.write_bytes(pickle.dumps(old))
    kv = EmbeddedKV()
    await kv.connect()
    store = RingStore(kv, "/bench")
    await store.seed(old)
    await store.set_control(MoverControl(throttle_per_s=10_000_000))
    cluster = cluster_for(old, None)
    started = time.perf_counter()
    await fill(cluster, users)
    fill_s = time.perf_counter() - started
    assert (await cluster.counts()).total == users

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    hb_in, hb_out = ctx.Pipe(duplex=False)
    lk_in, lk_out = ctx.Pipe(duplex=False)
    procs = [
        ctx.Process(target=heartbeats, args=(ring_file, users, stop, hb_out)),
        ctx.Process(target=lookups, args=(ring_file, users, stop, lk_out)),
    ]
    for proc in procs:
        proc.start()
    await asyncio.sleep(3.0)  # both loops running (imports, connections)
    before_at = time.time()
    await asyncio.sleep(BEFORE_S)

    new = RingSpec(
        2, (*old.shards, ShardSpec("s4", urls[4], 1)), old.shards, "migrating", old.vnodes
    )
    stored = await store.ring()
    assert stored is not None
    assert (await store.change(new, stored.revision))[0]
    ring_file.write_bytes(pickle.dumps(new))
    mover = Mover(cluster, store, "bench", time.time, batch=batch)
    cpu_before = await redis_cpu(urls[:5])
    move_at = time.time()
    first_pass_s = 0.0
    for _ in range(100_000):
        said = await mover.run_once()
        progress = mover.progress
        if progress is not None and progress.passes >= 1 and not first_pass_s:
            first_pass_s = time.time() - move_at
        if "is stable" in said:
            break
    stable_at = time.time()
    cpu_move = await redis_cpu(urls[:5]) - cpu_before
    ring_file.write_bytes(pickle.dumps((await store.ring()).record))  # type: ignore[union-attr]
    await asyncio.sleep(1.0)
    stop.set()
    hb: list[tuple[float, int, int]] = hb_in.recv()
    lk, examples = lk_in.recv()
    for proc in procs:
        proc.join(30)

    moved = mover.moved_total
    counts = await cluster.counts()
    on_new = (await cluster.shards["s4"].counters()).get("all", 0)
    ring = Ring(RingSpec(2, new.shards, vnodes=old.vnodes))
    should = sum(1 for i in range(users) if ring.owner(f"u{i}") == "s4")
    naive_users = [(f"{PREFIX}u:u{i}", user(i).pack()) for i in range(moved)]
    naive = await naive_move(urls[5], urls[6], naive_users)
    await cluster.close()
    await kv.close()
    move_s = stable_at - move_at
    before = rate(hb, before_at, move_at)
    during = rate(hb, move_at, stable_at)
    return {
        "users": users,
        "fill_s": round(fill_s, 2),
        "moved": moved,
        "ideal": round(users / 5),
        "moved_vs_ideal": round(moved / (users / 5), 4),
        "hash_space_moved": round(new_share(old, new), 4),
        "on_new_shard": on_new,
        "owned_by_new_shard": should,
        "total_after": counts.total,
        "move_s": round(move_s, 3),
        "first_pass_s": round(first_pass_s, 3),
        "rate_per_s": round(moved / move_s),
        "first_pass_rate_per_s": round(moved / first_pass_s) if first_pass_s else None,
        "naive_rate_per_s": round(naive),
        "ratio_vs_naive": round(moved / move_s / naive, 2),
        "redis_cpu_us_per_moved": round(cpu_move / max(1, moved) * 1e6, 2),
        "lookups": sum(n for t, n, _ in lk if move_at < t <= stable_at),
        "failed_lookups": sum(f for _, _, f in lk),
        "failed_examples": examples[:5],
        "heartbeats_before_per_s": round(before),
        "heartbeats_during_per_s": round(during),
        "heartbeat_ratio": round(during / before, 3) if before else None,
        "heartbeats_missing": sum(m for _, _, m in hb),
    }


def new_share(old: RingSpec, new: RingSpec) -> float:
    from control.presence.ring import moved_share

    return moved_share(Ring(old), Ring(RingSpec(2, new.shards, vnodes=new.vnodes)))


async def main(users: int, runs: int, batch: int) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ring-") as tmp:
        work = Path(tmp)
        servers = [RedisServer(work / f"redis{i}") for i in range(7)]
        for server in servers:
            server.start()
        try:
            for _ in range(runs):
                result = await one_run(servers, users, batch, work)
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            for server in servers:
                server.stop()
    keys = ("rate_per_s", "naive_rate_per_s", "ratio_vs_naive", "heartbeat_ratio")
    medians = {k: statistics.median(r[k] for r in results) for k in keys}
    medians["failed_lookups"] = sum(r["failed_lookups"] for r in results)
    medians["moved_vs_ideal"] = max(r["moved_vs_ideal"] for r in results)
    return {"runs": results, "medians": medians}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=5_000, help="the mover's batch (SCAN COUNT)")
    args = parser.parse_args()
    if args.users < 10_000 or args.runs < 1 or args.batch < 1:
        parser.error("--users at least 10000, --runs and --batch at least 1")
    print(json.dumps(asyncio.run(main(args.users, args.runs, args.batch))["medians"]))
