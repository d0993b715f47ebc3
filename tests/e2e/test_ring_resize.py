"""Issue 14's system tests: the status cluster ring resized while live, on real Redis and
real processes. A controller killed mid-migration, 4->5 and 5->4 under load against an
oracle, and a shard restarted empty under access nodes' heartbeats."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.common.kv.embedded import EmbeddedKV
from control.presence.cluster import PresenceCluster
from control.presence.follower import RingFollower
from control.presence.model import Presence
from control.presence.mover import Mover
from control.presence.redis_store import RedisShard
from control.presence.resize import add_shard, remove_shard
from control.presence.ring import Ring, RingSpec, ShardSpec, moved_share
from control.presence.ringstore import MoverControl, RingStore
from control.presence.shards import build_cluster, open_shard_for
from control.testing import EtcdServer, Pinger, RedisServer, until
from tests.e2e.system import Cluster, get, ready

pytestmark = pytest.mark.e2e

BREAKER_OPEN_S = 2.0  # PresenceCluster's breaker_open_s (its default, as launch builds it)
FAR_S = 3600  # users written by the test itself: no heartbeat, so no expiry in the test


# -- what is on the shards -------------------------------------------------------------------


async def shard_contents(
    shards: dict[str, str], key_prefix: str
) -> dict[str, list[tuple[Presence, int]]]:
    """Every entry on each shard (id -> url), read with SCAN: the ground truth."""
    out: dict[str, list[tuple[Presence, int]]] = {}
    for sid, url in shards.items():
        store = RedisShard(sid, url, FAR_S, key_prefix)
        try:
            found: dict[str, tuple[Presence, int]] = {}
            cursor = "0"
            for _ in range(100_000):  # bounded: SCAN ends
                cursor, batch = await store.scan(cursor, 1000)
                for p, deadline in batch:
                    found[p.member] = (p, deadline)
                if cursor == "0":
                    break
            out[sid] = list(found.values())
        finally:
            await store.close()
    return out


async def shard_totals(shards: dict[str, str], key_prefix: str) -> dict[str, int]:
    """Each shard's own online counter."""
    out = {}
    for sid, url in shards.items():
        store = RedisShard(sid, url, FAR_S, key_prefix)
        try:
            out[sid] = (await store.counters()).get("all", 0)
        finally:
            await store.close()
    return out


# -- 1a: the leader killed mid-migration -----------------------------------------------------


@pytest.fixture
def three_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    servers = [RedisServer(tmp_path / f"redis{i}") for i in range(3)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


async def ring_status(http: aiohttp.ClientSession, c: Cluster) -> Any:
    return await get(http, f"{c.url}/v1/ring")


async def test_a_controller_killed_mid_migration_is_finished_by_the_other(
    tmp_path: Path,
    etcd_server: EtcdServer,
    three_redis: list[RedisServer],
    http: aiohttp.ClientSession,
) -> None:
    users = 20_000
    c = Cluster(
        tmp_path,
        etcd_server,
        three_redis[:2],
        nodes=[{"id": "n0", "region": "north", "zone": "a"}],
    )
    key_prefix = f"e2e{c.ports['scheduler']}:"
    try:
        # n0 is registered, so the controllers keep its users (not orphans).
        c.start("scheduler", "controller", "controller-b", "n0")
        await until(lambda: _stored_version(http, c), 20, "the ring seeded from the config")
        writer = build_cluster(
            [(f"s{i}", r.url, 1) for i, r in enumerate(three_redis[:2])],
            "redis",
            FAR_S,
            key_prefix,
        )
        try:
            uids = [f"user-{i:06}" for i in range(users)]
            for start in range(0, users, 500):
                await asyncio.gather(
                    *(
                        writer.online(Presence(u, "phone", "n0", f"c-{u}", region="north"))
                        for u in uids[start : start + 500]
                    )
                )
        finally:
            await writer.close()
        # ~1/3 of 20k move at 2,000 a second: a few seconds, long enough to kill the leader.
        async with http.put(f"{c.url}/v1/ring/throttle", json={"users_per_s": 2000}) as resp:
            assert resp.status == 200, await resp.text()
        added = await asyncio.to_thread(
            c.imctl, "presence", "ring", "add", three_redis[2].url, "--id", "s2"
        )
        assert added.returncode == 0, added.stdout + added.stderr

        async def moving() -> bool:
            p = (await ring_status(http, c))["progress"]
            return p is not None and p["version"] == 2 and p["moved"] > 0

        await until(moving, 20, "the mover moving users")
        status = await ring_status(http, c)
        first = status["progress"]["by"]
        leader = "controller" if first.endswith(f":{c.ports['controller']}") else "controller-b"
        other = "controller-b" if leader == "controller" else "controller"
        assert first.endswith(f":{c.ports[leader]}")
        assert status["ring"]["state"] == "migrating"
        c.kill(leader)
        killed_at = status["progress"]["moved"]

        async def stable() -> bool:
            s = await ring_status(http, c)
            return s["ring"]["state"] == "stable" and s["ring"]["version"] == 2

        took = await until(stable, 45, "the ring stable after the leader's death", every=0.2)
        final = await ring_status(http, c)
        progress = final["progress"]
        print(f"\nleader killed at {killed_at} moved; stable {took:.1f}s later: {progress}")
        assert progress["state"] == "stable"
        assert progress["by"].endswith(f":{c.ports[other]}")
        assert progress["moved"] > killed_at
    finally:
        c.stop_all()

    urls = {f"s{i}": r.url for i, r in enumerate(three_redis)}
    found = await shard_contents(urls, key_prefix)
    ring = Ring(RingSpec(2, tuple(ShardSpec(sid, url) for sid, url in urls.items())))
    where: dict[str, list[str]] = {}
    for sid, entries in found.items():
        for p, _ in entries:
            where.setdefault(p.uid, []).append(sid)
    assert sorted(where) == uids, "users lost or invented"
    twice = {u: s for u, s in where.items() if len(s) > 1}
    assert not twice, f"{len(twice)} users on two shards, e.g. {list(twice.items())[:3]}"
    wrong = {u: s[0] for u, s in where.items() if s[0] != ring.owner(u)}
    assert not wrong, f"{len(wrong)} users not on their owner, e.g. {list(wrong.items())[:3]}"
    assert found["s2"], "nobody moved to the new shard"
    totals = await shard_totals(urls, key_prefix)
    assert totals == {sid: len(entries) for sid, entries in found.items()}


async def _stored_version(http: aiohttp.ClientSession, c: Cluster) -> bool:
    try:
        return bool((await ring_status(http, c))["ring"]["version"] == 1)
    except (aiohttp.ClientError, KeyError):
        return False


# -- 1b: 4 -> 5 -> 4 under load, every read checked against an oracle ------------------------


class Oracle:
    """The test's own record of who is online: uid -> {device: conn}."""

    def __init__(self) -> None:
        self.online: dict[str, dict[str, str]] = {}

    def entries(self) -> int:
        return sum(len(d) for d in self.online.values())


class Worker:
    """One client process's share of users (disjoint from the others', so the oracle is
    exact for them): logins, logouts, heartbeats and locates through its own cluster
    object, every answer checked as it comes."""

    def __init__(self, name: str, cluster: PresenceCluster, uids: list[str], oracle: Oracle):
        self.name = name
        self.cluster = cluster
        self.uids = uids
        self.oracle = oracle
        self.rng = random.Random(name)
        self.checked = 0  # locate answers compared with the oracle
        self.ops = 0
        self.serial = 0

    async def login(self, uid: str, device: str) -> None:
        self.serial += 1
        conn = f"{self.name}-{self.serial}"
        await self.cluster.online(Presence(uid, device, "n0", conn, region="north"))
        self.oracle.online.setdefault(uid, {})[device] = conn

    async def step(self) -> None:
        rng, online = self.rng, self.oracle.online
        roll = rng.random()
        self.ops += 1
        if roll < 0.25:
            await self.login(rng.choice(self.uids), rng.choice(("phone", "desk")))
        elif roll < 0.45:
            uid = rng.choice(self.uids)
            devices = online.get(uid)
            if devices:
                device = rng.choice(sorted(devices))
                assert await self.cluster.offline(uid, device, devices[device]), (uid, device)
                del devices[device]
                if not devices:
                    del online[uid]
        elif roll < 0.7:
            sample = rng.sample(self.uids, 100)
            members = [(u, d, c) for u in sample for d, c in online.get(u, {}).items()]
            missing = await self.cluster.touch(members)
            assert missing == [], f"{self.name}: heartbeats of online users missing: {missing}"
        else:
            await self.check(rng.sample(self.uids, 200))

    async def check(self, uids: list[str]) -> None:
        found = await self.cluster.locate(uids)
        assert not found.unknown, found.unknown
        for uid in uids:
            got = {p.device: p.conn for p in found.get(uid, [])}
            assert got == self.oracle.online.get(uid, {}), (
                f"{self.name}: locate({uid}) = {got}, online: {self.oracle.online.get(uid)} "
                f"(ring {self.cluster.spec.version} {self.cluster.spec.state})"
            )
        self.checked += len(uids)

    async def run(self, stop: asyncio.Event) -> None:
        for _ in range(1_000_000):  # bounded; stop ends it long before
            if stop.is_set():
                return
            await self.step()
            await asyncio.sleep(0)


async def wait_stable(store: RingStore, version: int, within: float) -> float:
    async def stable() -> bool:
        stored = await store.ring()
        assert stored is not None and stored.record is not None
        return stored.record.version == version and not stored.record.migrating

    return await until(stable, within, f"ring version {version} stable", every=0.05)


async def test_4_to_5_and_back_under_load_every_read_is_right(
    redis_servers: list[RedisServer],
) -> None:
    key_prefix = f"rz{random.randrange(1 << 30)}:"
    # Five shards on the session's two servers, one database each.
    urls = {
        f"s{i}": redis_servers[i % 2].url.rsplit("/", 1)[0] + f"/{1 + i // 2}" for i in range(5)
    }
    shards = tuple(ShardSpec(sid, url) for sid, url in urls.items())
    kv = EmbeddedKV()
    await kv.connect()
    store = RingStore(kv, "/rz")
    four = await store.seed(RingSpec(1, shards[:4]))
    open_shard = open_shard_for("redis", FAR_S, key_prefix)

    async def reload() -> RingSpec | None:
        stored = await store.ring()
        return None if stored is None else stored.record

    def client() -> PresenceCluster:
        return PresenceCluster(four, {}, FAR_S, open_shard=open_shard, reload=reload)

    mover_side, fast, late = client(), client(), client()
    clusters = [mover_side, fast, late]
    oracle = Oracle()
    uids = [f"u{i:05}" for i in range(6000)]
    # "fast" follows the ring key; "late" never does: it learns each ring only when a
    # shard refuses it (StaleRing) and it reloads.
    workers = [Worker("fast", fast, uids[0::2], oracle), Worker("late", late, uids[1::2], oracle)]
    for w in workers:
        for start in range(0, len(w.uids), 500):
            await asyncio.gather(*(w.login(u, "phone") for u in w.uids[start : start + 500]))
    stop, stop_load = asyncio.Event(), asyncio.Event()
    mover = Mover(mover_side, store, "m", time.time, batch=200)
    tasks = [
        asyncio.create_task(mover.run(stop, idle_s=0.05), name="mover"),
        asyncio.create_task(RingFollower(store, fast).run(stop), name="follower"),
        *(asyncio.create_task(w.run(stop_load), name=w.name) for w in workers),
    ]
    try:
        # ~1,200 users move at 600 a second: two seconds of migration under load.
        await store.set_control(MoverControl(throttle_per_s=600))
        measured = []
        for change in (
            lambda s: add_shard(s, urls["s4"], shard_id="s4"),
            lambda s: remove_shard(s, "s4"),
        ):
            stored = await store.ring()
            assert stored is not None and stored.record is not None
            spec = change(stored.record)
            entries, moved_before, checked = oracle.entries(), mover.moved_total, _checked(workers)
            hash_share = moved_share(Ring(stored.record), Ring(spec))
            assert (await store.change(spec, stored.revision))[0]
            took = await wait_stable(store, spec.version, 30)
            for t in tasks:
                if t.done():
                    t.result()  # a failed check ends the test here
            moved = (mover.moved_total - moved_before) / entries
            ideal = 1 / 5  # the new (or leaving) shard's weight share
            measured.append(moved)
            print(
                f"\nring {spec.version}: {len(spec.previous)} -> {len(spec.shards)} shards in "
                f"{took:.1f}s; moved {moved:.4f} of {entries} entries (ideal {ideal:.4f}, "
                f"hash space {hash_share:.4f}); "
                f"{_checked(workers) - checked} locate answers checked meanwhile"
            )
            assert _checked(workers) - checked > 0, "no read checked during the migration"
            assert moved <= 1.1 * ideal
            assert moved >= 0.5 * ideal  # it did move the users whose owner changed
        stop_load.set()
        await asyncio.gather(*tasks[2:])
        # The late client learnt both rings, only from refusals.
        assert late.spec.version == 3 and fast.spec.version == 3
        for w in workers:
            await w.check(w.uids)
        found = await shard_contents(urls, key_prefix)
        ring = Ring((await reload()) or four)
        assert found["s4"] == []
        on = [(p.uid, p.device, sid) for sid, es in found.items() for p, _ in es]
        assert all(ring.owner(uid) == sid for uid, _, sid in on)
        assert len(on) == len({(u, d) for u, d, _ in on}) == oracle.entries()
        assert (await fast.counts()).total == oracle.entries()
    finally:
        stop.set()
        stop_load.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clusters:
            await c.close()
        await kv.close()


def _checked(workers: list[Worker]) -> int:
    return sum(w.checked for w in workers)


# -- 1c: a shard restarted empty under the access nodes' heartbeats ----------------------------


async def lookup(http: aiohttp.ClientSession, c: Cluster, uids: list[str]) -> Any:
    async with http.post(f"{c.url}/v1/presence/lookup", json={"uids": uids}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_shard_restarted_empty_is_unknown_while_down_and_whole_within_a_heartbeat(
    tmp_path: Path,
    etcd_server: EtcdServer,
    three_redis: list[RedisServer],
    http: aiohttp.ClientSession,
) -> None:
    redis = three_redis[:2]
    c = Cluster(tmp_path, etcd_server, redis)
    interval, flush = 2.0, 0.5  # the Cluster's heartbeat.interval_s and presence.flush_s
    pingers: list[Pinger] = []
    try:
        c.start("controller", "n0", "n1", "scheduler")
        await ready(http, c, {"n0", "n1"})
        uids = [f"w{i:03}" for i in range(60)]
        for i, uid in enumerate(uids):
            ws = await http.ws_connect(c.ws(f"n{i % 2}", uid))
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            pingers.append(Pinger(ws, every=interval / 2, strict=True))

        async def all_online() -> bool:
            return len((await lookup(http, c, uids))["online"]) == len(uids)

        await until(all_online, 10, "every client online")
        ring = Ring(RingSpec(1, tuple(ShardSpec(f"s{i}", r.url) for i, r in enumerate(redis))))
        down = sorted(u for u in uids if ring.owner(u) == "s1")
        up = sorted(set(uids) - set(down))
        assert down and up

        redis[1].kill()

        async def down_unknown() -> bool:
            body = await lookup(http, c, uids)
            assert body["offline"] == [], f"users read offline while their shard is down: {body}"
            return bool(sorted(body["unknown"]) == down and sorted(body["online"]) == up)

        await until(down_unknown, 10, "the down shard's users unknown")
        for _ in range(10):  # ~3 s down: a few heartbeats dropped, still unknown, never offline
            assert await down_unknown()
            await asyncio.sleep(0.3)
        assert all(p.alive for p in pingers), [p.other for p in pingers if not p.alive]

        redis[1].start()  # the same port, empty: no persistence
        took = await until(all_online, 15, "presence whole again", every=0.1)
        print(f"\nshard s1 back empty: presence whole again {took:.2f}s later")
        # The access nodes log the lost users in again on their next heartbeat's flush,
        # once their breaker for the shard lets a trial call through: a breaker opened
        # just before the restart adds its open period (2 s) to the heartbeat interval.
        assert took <= interval + flush + BREAKER_OPEN_S
        assert all(p.alive for p in pingers), [p.other for p in pingers if not p.alive]
        body = await lookup(http, c, uids)
        assert body["unknown"] == [] and body["offline"] == []
    finally:
        for p in pingers:
            await p.close()
        c.stop_all()
