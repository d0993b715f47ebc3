"""The two presence engines side by side, on real servers started here (loopback, no
persistence), each against a naive baseline on the same servers in the same run.

    python -m load.bench_engines [--runs 3] [--users 100000]

- ring: 3 plain redis-servers as ring shards (``PresenceCluster``, ``presence.backend:
  redis``); resize = adding a 4th shard, moved by our ``Mover``.
- redis-cluster: a Redis Cluster of 3 masters + 3 replicas (``RedisClusterPresence``);
  resize = ``redis-cli --cluster reshard`` of a quarter of the slots to a 4th master that
  joined empty (the same share of users as 3 -> 4 shards on the ring).

1. Heartbeat ingest: ``touch`` of every user in batches of 5,000 for ``--seconds``; naive:
   a pipelined ``SET presence:<uid>:<device> <ts> EX 90`` per heartbeat (on the cluster
   through redis-py's cluster pipeline, on the ring to one server).
2. Locate 10k: ``locate`` of 10,000 online users grouped by node (what a push does); naive:
   one ``MGET`` of 10,000 plain keys (ring: one server; cluster: ``mget_nonatomic``).
3. Resize: users moved per second, and whether every user is still found afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from control.common.kv.embedded import EmbeddedKV
from control.presence.cluster_engine import RedisClusterPresence
from control.presence.model import Presence
from control.presence.mover import Mover
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import MoverControl, RingStore
from control.presence.shards import build_cluster
from control.testing import (
    CLUSTER_PORT_MAX,
    RedisClusterServer,
    RedisServer,
    free_port,
    redis_cli,
    until_sync,
)

BATCH = 5_000
LOCATE_N = 10_000


def user(i: int) -> Presence:
    return Presence(f"u{i}", "phone", f"n{i % 3}", f"c{i}", region="r", platform="ios")


async def fill(engine: Any, users: int) -> None:
    for start in range(0, users, 2_000):
        await asyncio.gather(
            *(engine.online(user(i)) for i in range(start, min(users, start + 2_000)))
        )


async def heartbeats(engine: Any, naive: Any, users: int, seconds: float) -> dict[str, float]:
    triples = [(f"u{i}", "phone", f"c{i}") for i in range(users)]

    async def ours() -> int:
        for start in range(0, users, BATCH):
            assert await engine.touch(triples[start : start + BATCH]) == []
        return users

    async def baseline() -> int:
        now = str(time.time())
        for start in range(0, users, BATCH):
            pipe = naive.pipeline(transaction=False)
            for u, d, _c in triples[start : start + BATCH]:
                pipe.set(f"presence:{u}:{d}", now, ex=90)
            await pipe.execute()
        return users

    out = {}
    for name, fn in (("imctl", ours), ("naive", baseline)):
        count, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            count += await fn()
        out[name] = count / (time.perf_counter() - t)
    return out


async def locate(engine: Any, naive: Any, cluster: bool, repeats: int = 10) -> dict[str, float]:
    uids = [f"u{i}" for i in range(LOCATE_N)]
    keys = [f"plain:{u}" for u in uids]
    if cluster:
        await naive.mset_nonatomic({k: "n1|c1" for k in keys})
    else:
        await naive.mset({k: "n1|c1" for k in keys})
    ours, base = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        by_node = (await engine.locate(uids)).by_node()
        ours.append((time.perf_counter() - t) * 1000)
        assert sum(len(g) for g in by_node.values()) == LOCATE_N
        t = time.perf_counter()
        values = await (naive.mget_nonatomic(keys) if cluster else naive.mget(keys))
        base.append((time.perf_counter() - t) * 1000)
        assert len(values) == LOCATE_N
    return {"imctl_ms": statistics.median(ours), "naive_mget_ms": statistics.median(base)}


async def ring_resize(engine: Any, urls: list[str], new_url: str, users: int) -> dict[str, float]:
    old = engine.spec
    kv = EmbeddedKV()
    await kv.connect()
    store = RingStore(kv, "/bench")
    await store.seed(old)
    await store.set_control(MoverControl(throttle_per_s=10_000_000))
    new = RingSpec(
        old.version + 1,
        (*old.shards, ShardSpec("s3", new_url, 1)),
        old.shards,
        "migrating",
        old.vnodes,
    )
    stored = await store.ring()
    assert stored is not None and (await store.change(new, stored.revision))[0]
    mover = Mover(engine, store, "bench", time.time, batch=5_000)
    t = time.perf_counter()
    for _ in range(100_000):
        if "is stable" in await mover.run_once():
            break
    took = time.perf_counter() - t
    found = await engine.locate([f"u{i}" for i in range(users)])
    await kv.close()
    return {
        "moved": mover.moved_total,
        "seconds": took,
        "users_per_s": mover.moved_total / took,
        "found": len(found),
    }


async def cluster_resize(
    rc: RedisClusterServer, engine: RedisClusterPresence, users: int
) -> dict[str, float]:
    """A 4th master joins empty; redis-cli reshards a quarter of the slots to it."""
    spare = RedisServer(rc.servers[0].data_dir.parent / "spare", rc.servers[0].extra)
    for _ in range(100):
        if spare.port <= CLUSTER_PORT_MAX:
            break
        spare.port = free_port()
    spare.start()
    rc.servers.append(spare)
    seed = rc.seeds[0]
    redis_cli(rc.servers[0].port, "--cluster", "add-node", f"127.0.0.1:{spare.port}", seed)
    until_sync(
        lambda: any(
            n["addr"] == f"127.0.0.1:{spare.port}" and n["role"] == "master" for n in rc.nodes()
        ),
        30,
        "joined",
    )
    until_sync(rc.healthy, 30, "cluster ok")

    def known_everywhere() -> bool:  # reshard asks every node to accept the new one
        addr = f"127.0.0.1:{spare.port}"
        return all(addr in redis_cli(s.port, "cluster", "nodes") for s in rc.servers if s.proc)

    until_sync(known_everywhere, 30, "every node knows the new master")
    t = time.perf_counter()
    ids = {n["addr"]: n["id"] for n in rc.nodes()}
    redis_cli(
        spare.port,
        *("--cluster", "reshard", seed, "--cluster-from", "all"),
        *("--cluster-to", ids[f"127.0.0.1:{spare.port}"], "--cluster-slots", str(16384 // 4)),
        *("--cluster-yes", "--cluster-pipeline", "1000"),
        timeout=600,
    )
    took = time.perf_counter() - t
    client = aioredis.Redis(port=spare.port, decode_responses=True)
    keys = await client.dbsize()
    await client.aclose()
    found = await engine.locate([f"u{i}" for i in range(users)])
    return {
        "keys_moved": keys,
        "seconds": took,
        "users_per_s": users / 4 / took,
        "found": len(found),
    }


async def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    servers = [RedisServer(work / f"ring{i}") for i in range(4)]
    for s in servers:
        s.start()
    try:
        ring = build_cluster(
            [(f"s{i}", s.url, 1) for i, s in enumerate(servers[:3])], "redis", 90, "b:"
        )
        await fill(ring, args.users)
        naive = aioredis.Redis.from_url(servers[0].url, decode_responses=True)
        out["ring"] = {
            "heartbeats_per_s": await heartbeats(ring, naive, args.users, args.seconds),
            "locate_10k": await locate(ring, naive, cluster=False),
            "resize_3_to_4": await ring_resize(
                ring, [s.url for s in servers[:3]], servers[3].url, args.users
            ),
        }
        await naive.aclose()
        await ring.close()
    finally:
        for s in servers:
            s.stop()
    rc = RedisClusterServer(work / "cluster", node_timeout_ms=5000)
    rc.start()
    try:
        engine = RedisClusterPresence(rc.seeds, 90, "b:")
        await fill(engine, args.users)
        naive_c = RedisCluster(host="127.0.0.1", port=rc.servers[0].port, decode_responses=True)
        out["redis-cluster"] = {
            "heartbeats_per_s": await heartbeats(engine, naive_c, args.users, args.seconds),
            "locate_10k": await locate(engine, naive_c, cluster=True),
            "resize_3_to_4": await cluster_resize(rc, engine, args.users),
        }
        await naive_c.aclose()
        await engine.close()
    finally:
        rc.stop()
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for i in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix=f"imctl-engines-{i}-"))
        runs.append(await one_run(args, work))
    med: dict[str, Any] = {}
    for engine in ("ring", "redis-cluster"):
        med[engine] = {
            "heartbeats_per_s": {
                k: statistics.median(r[engine]["heartbeats_per_s"][k] for r in runs)
                for k in ("imctl", "naive")
            },
            "locate_10k_ms": {
                k: statistics.median(r[engine]["locate_10k"][k] for r in runs)
                for k in ("imctl_ms", "naive_mget_ms")
            },
            "resize_users_per_s": statistics.median(
                r[engine]["resize_3_to_4"]["users_per_s"] for r in runs
            ),
        }
    return {"users": args.users, "median": med, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    print(json.dumps(asyncio.run(main_async(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
