"""The resize's pieces, one at a time: fencing, tombstones, scan/adopt/release on the
embedded shard; the cluster's breaker and ``unknown``, the counts seqlock, moved share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from control.common.errors import BackendUnavailable
from control.presence.cluster import PresenceCluster
from control.presence.model import Locations, Presence, ShardUnavailable, StaleRing
from control.presence.ring import Ring, RingSpec, ShardSpec, moved_share
from control.presence.shards import open_shard_for
from control.presence.store import TOMBSTONE_S, EmbeddedShard

NOW = 1_000_000.0
NOW_MS = int(NOW * 1000)


def p(uid: str, device: str = "d", conn: str = "c", node: str = "n1") -> Presence:
    return Presence(uid, device, node, conn, 0, "online", "r", "web")


def spec(version: int, ids: Sequence[str], previous: Sequence[str] = ()) -> RingSpec:
    return RingSpec(
        version,
        tuple(ShardSpec(i, f"embedded:{i}") for i in ids),
        tuple(ShardSpec(i, f"embedded:{i}") for i in previous),
        "migrating" if previous else "stable",
        vnodes=40,
    )


# The embedded shard ----------------------------------------------------------------------


async def test_fencing_refuses_older_writers_and_newer_ones_raise_the_version() -> None:
    shard = EmbeddedShard("s0", 30)
    assert await shard.served_version() == 0
    await shard.online(p("a"), NOW_MS, NOW, ring_version=3)  # the first writer fences
    assert await shard.served_version() == 3
    with pytest.raises(StaleRing) as refused:
        await shard.online(p("b"), NOW_MS, NOW, ring_version=2)
    assert refused.value.served == 3 and "ring version 3 is served here" in str(refused.value)
    with pytest.raises(StaleRing):
        await shard.offline("a", "d", "c", "closed", NOW, ring_version=2)
    with pytest.raises(StaleRing):  # reads too, but a read never raises the version
        await shard.locate(["a"], ring_version=2)
    await shard.locate(["a"], ring_version=9)
    assert await shard.served_version() == 3
    assert await shard.fence(5) == 5 and await shard.fence(4) == 5  # never lowers
    assert set(await shard.locate(["a", "b"], ring_version=5)) == {"a"}  # b was refused


async def test_a_tombstone_keeps_the_mover_from_copying_a_gone_connection_back() -> None:
    target = EmbeddedShard("new", 30)
    gone = p("a", conn="c1")
    assert not await target.offline("a", "d", "c1", "closed", NOW, ring_version=1, tombstone=True)
    assert not await target.offline("b", "d", "c1", "closed", NOW, ring_version=1)  # no stone
    later = NOW_MS + 10_000
    adopted = await target.adopt(
        [(gone, later + 30_000), (p("b", conn="c1"), later + 30_000)], later, ring_version=1
    )
    assert [x.uid for x in adopted] == ["b"]
    assert not target._users.get("a")
    # The stone is short-lived: long after, the same triple could come in (it never does).
    much_later = NOW_MS + int(TOMBSTONE_S * 1000) + 1
    assert await target.adopt([(gone, much_later + 1)], much_later, ring_version=1) == [gone]


async def test_adopt_skips_newer_and_expired_and_writes_no_events() -> None:
    target = EmbeddedShard("new", 30)
    await target.online(p("a", conn="newer"), NOW_MS + 30_000, NOW, ring_version=1)
    events = len(target._events)
    entries = [
        (p("a", conn="older"), NOW_MS + 20_000),  # the shard has a newer one of that device
        (p("b"), NOW_MS - 1),  # expired
        (p("c", node="n2"), NOW_MS + 20_000),
    ]
    adopted = await target.adopt(entries, NOW_MS, ring_version=1)
    assert [x.uid for x in adopted] == ["c"] and len(target._events) == events
    assert (await target.counters())["all"] == 2 and (await target.counters())["n:n2"] == 1
    assert target._users["a"]["d"].conn == "newer"
    (who,) = await target.who("c", ring_version=1)
    assert who.last_seen == pytest.approx(NOW + 20 - 30)  # the deadline came along


async def test_release_removes_only_the_same_connection_quietly() -> None:
    source = EmbeddedShard("old", 30)
    for uid in ("a", "b"):
        await source.online(p(uid), NOW_MS, NOW, ring_version=1)
    await source.online(p("b", conn="relogged"), NOW_MS, NOW, ring_version=1)
    events = len(source._events)
    # Only uid, device and conn are needed: counters follow the stored entry.
    released = await source.release([Presence("a", "d", "", "c"), p("b"), p("zz")], ring_version=1)
    assert released == 1 and len(source._events) == events
    assert set(source._users) == {"b"} and await source.counters() == {
        "all": 1,
        "r:r": 1,
        "n:n1": 1,
        "p:web": 1,
    }
    assert source._by_node["n1"] == {p("b", conn="relogged").member}


async def test_scan_meets_every_entry_present_for_the_whole_scan() -> None:
    shard = EmbeddedShard("s0", 30)
    for i in range(50):
        await shard.online(p(f"u{i}"), NOW_MS + i, NOW, ring_version=1)
    seen: list[tuple[Presence, int]] = []
    cursor, rounds = "0", 0
    while True:
        cursor, batch = await shard.scan(cursor, 7)
        seen += batch
        rounds += 1
        # Users come and go between batches: the ones present throughout are still met.
        await shard.online(p(f"new{rounds}"), NOW_MS, NOW, ring_version=1)
        await shard.offline(f"u{49 - rounds}", "d", "c", "closed", NOW, ring_version=1)
        if cursor == "0":
            break
        assert rounds < 20
    kept = {f"u{i}" for i in range(50 - rounds)}
    assert kept <= {e.uid for e, _ in seen}
    assert all(d == NOW_MS + int(e.uid[1:]) for e, d in seen if e.uid.startswith("u"))


async def test_replace_out_removes_whatever_conn_with_a_replaced_event() -> None:
    shard = EmbeddedShard("old", 30)
    await shard.online(p("a", conn="c9"), NOW_MS, NOW, ring_version=1)
    gone = await shard.replace_out("a", "d", NOW, ring_version=2)
    assert gone is not None and gone.conn == "c9"
    assert (shard._events[-1].kind, shard._events[-1].reason) == ("offline", "replaced")
    assert await shard.replace_out("a", "d", NOW, ring_version=2) is None
    assert await shard.served_version() == 2


# The cluster -----------------------------------------------------------------------------


class Flaky(EmbeddedShard):
    """An embedded shard that can be switched off (every call: BackendUnavailable)."""

    down = False

    def __getattribute__(self, name: str) -> object:
        attr = super().__getattribute__(name)
        public = not name.startswith("_") and name != "down"
        if public and asyncio.iscoroutinefunction(attr) and super().__getattribute__("down"):

            async def fail(*args: object, **kw: object) -> object:
                raise BackendUnavailable(f"shard {self.id} is off")

            return fail
        return attr


def two_shards(clock_box: list[float]) -> tuple[PresenceCluster, dict[str, Flaky]]:
    stores = {sid: Flaky(sid, 30) for sid in ("s0", "s1")}
    cluster = PresenceCluster(
        spec(1, ["s0", "s1"]),
        stores,
        30,
        breaker_failures=2,
        breaker_open_s=5,
        monotonic=lambda: clock_box[0],
    )
    return cluster, stores


async def test_a_shard_down_reads_unknown_drops_heartbeats_and_opens_its_breaker() -> None:
    mono = [0.0]
    cluster, stores = two_shards(mono)
    uids = [f"u{i}" for i in range(20)]
    for uid in uids:
        await cluster.online(p(uid))
    on_s1 = {u for u in uids if cluster.ring.owner(u) == "s1"}
    assert on_s1 and on_s1 != set(uids)
    stores["s1"].down = True

    found = await cluster.locate(uids)
    assert found.unknown == on_s1 and set(found) == set(uids) - on_s1  # unknown, not offline
    with pytest.raises(ShardUnavailable) as down:
        await cluster.who(next(iter(on_s1)))
    assert down.value.shard == "s1" and isinstance(down.value, BackendUnavailable)
    # Heartbeats for it are dropped and counted; nobody is reported missing.
    assert await cluster.touch([(u, "d", "c") for u in uids]) == []
    stats = cluster.stats.shards["s1"]
    assert stats.dropped_heartbeats == len(on_s1) and stats.breaker == "open"
    calls = stats.ops
    await cluster.locate(uids)  # open: not even tried
    assert cluster.stats.shards["s1"].ops == calls
    assert cluster.stats.shards["s0"].breaker == "closed"

    stores["s1"].down = False
    assert (await cluster.locate(uids)).unknown == on_s1  # still open
    mono[0] += 5  # one trial goes through, and closes it
    found = await cluster.locate(uids)
    assert not found.unknown and set(found) == set(uids)
    assert cluster.stats.shards["s1"].breaker == "closed"


async def test_counts_wait_for_a_batch_in_flight_then_answer_exactly() -> None:
    old, new = EmbeddedShard("s0", 30), EmbeddedShard("s1", 30)
    cluster = PresenceCluster(spec(2, ["s0", "s1"], ["s0"]), {"s0": old, "s1": new}, 30)
    uid = next(f"u{i}" for i in range(100) if cluster.ring.owner(f"u{i}") == "s1")
    await old.online(p(uid), NOW_MS * 2, NOW, ring_version=2)
    # A mover batch stopped between its copy and its release: the user is on both shards.
    await old.bump_move_epoch()
    await new.adopt([(p(uid), NOW_MS * 2)], NOW_MS, ring_version=2)
    counting = asyncio.create_task(cluster.counts())
    await asyncio.sleep(0.1)
    assert not counting.done()  # it waits instead of counting the user twice
    await old.release([p(uid)], ring_version=2)
    await old.bump_move_epoch()
    counts = await asyncio.wait_for(counting, 2)
    assert counts.total == 1


async def test_move_step_moves_only_users_whose_owner_changed() -> None:
    old = EmbeddedShard("s0", 30)
    cluster = PresenceCluster(
        spec(1, ["s0"]), {"s0": old}, 30, lambda: NOW, open_shard=open_shard_for("embedded", 30, "")
    )
    uids = [f"u{i}" for i in range(200)]
    for uid in uids:
        await cluster.online(p(uid))
    assert await cluster.apply_ring(spec(2, ["s0", "s1"], ["s0"]))
    assert not await cluster.apply_ring(spec(2, ["s0", "s1"], ["s0"]))  # same version
    await cluster.fence_all()
    new = cluster.shards["s1"]
    assert await old.served_version() == await new.served_version() == 2
    events = len(old._events)
    cursor, moved, batches = "0", 0, 0
    while True:
        step = await cluster.move_step("s0", cursor, 32)
        moved, cursor, batches = moved + step.moved, step.cursor, batches + 1
        if cursor == "0":
            break
    should = {u for u in uids if cluster.ring.owner(u) == "s1"}
    assert moved == len(should) and set(new._users) == should
    assert set(old._users) == set(uids) - should
    assert len(old._events) == events and not new._events  # moving writes no events
    assert await old.move_epoch() == 2 * batches  # even: no batch in flight
    share = cluster.moved_fraction()
    assert abs(share - len(should) / len(uids)) < 0.12
    assert (await cluster.counts()).total == len(uids)
    assert await cluster.apply_ring(spec(2, ["s1"], []))  # finished without s0:
    assert "s0" not in cluster.shards  # its store is closed and left


def test_moved_share_is_the_share_of_users_that_change_owner() -> None:
    four = Ring(spec(1, ["a", "b", "c", "d"]))
    five = Ring(spec(2, ["a", "b", "c", "d", "e"]))
    assert moved_share(four, four) == 0.0
    uids = [f"user-{i}" for i in range(20_000)]
    measured = sum(four.owner(u) != five.owner(u) for u in uids) / len(uids)
    assert moved_share(four, five) == pytest.approx(measured, abs=0.01)
    assert 0.1 < moved_share(four, five) < 0.3


def test_overlay_prefers_the_new_owner_per_device() -> None:
    new = Locations(entries={"a": [p("a", "phone", "c2")]}, unknown=["x"])
    old = Locations(entries={"a": [p("a", "phone", "c1"), p("a", "laptop", "c3")], "b": [p("b")]})
    both = Locations.overlay(new, old)
    assert sorted((e.device, e.conn) for e in both["a"]) == [("laptop", "c3"), ("phone", "c2")]
    assert [e.conn for e in both["b"]] == ["c"] and both.unknown == {"x"}


async def test_timing_of_a_stale_client_retry_is_bounded() -> None:
    """A client whose reload never finds a newer ring gives up with StaleRing, fast."""
    shard = EmbeddedShard("s0", 30)
    await shard.fence(7)
    reloads = []

    async def reload() -> RingSpec:
        reloads.append(1)
        return spec(1, ["s0"])

    cluster = PresenceCluster(spec(1, ["s0"]), {"s0": shard}, 30, reload=reload)
    started = time.monotonic()
    with pytest.raises(StaleRing):
        await cluster.online(p("a"))
    assert len(reloads) == 1 and time.monotonic() - started < 1


async def test_events_follow_a_shard_the_ring_adds() -> None:
    cluster = PresenceCluster(
        spec(1, ["s0"]), {"s0": EmbeddedShard("s0", 30)}, 30, open_shard=open_shard_for("", 30, "")
    )
    stop = asyncio.Event()
    seen: list[tuple[str, str]] = []

    async def tail() -> None:
        async for e in cluster.events(block_ms=50, stop=stop):
            seen.append((e.shard, e.uid))

    task = asyncio.create_task(tail())
    await asyncio.sleep(0.05)
    await cluster.apply_ring(spec(2, ["s0", "s1"], ["s0"]))
    uid = next(f"u{i}" for i in range(100) if cluster.ring.owner(f"u{i}") == "s1")
    await cluster.online(p(uid))
    deadline = time.monotonic() + 5
    while ("s1", uid) not in seen:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_connection_replaced_mid_move_is_not_copied_back() -> None:
    """The mover scans c1 on the old owner; the user logs in again (c2, on the new owner,
    which takes c1 out of the old one) and leaves; the batch's adopt must not bring c1
    back."""
    a, b = EmbeddedShard("a", 30), EmbeddedShard("b", 30)
    before = spec(1, ["a"])
    cluster = PresenceCluster(before, {"a": a, "b": b}, 30, lambda: NOW)
    uid = next(
        f"u{i}" for i in range(1000) if Ring(spec(2, ["a", "b"], ["a"])).owner(f"u{i}") == "b"
    )
    await cluster.online(p(uid, conn="c1"))
    assert await cluster.apply_ring(spec(2, ["a", "b"], ["a"]))
    await cluster.fence_all()
    _, scanned = await a.scan("0", 100)  # the batch's scan, before the login
    assert [e.conn for e, _ in scanned] == ["c1"]
    replaced = await cluster.online(p(uid, conn="c2"))
    assert replaced is not None and replaced.conn == "c1"
    assert await cluster.offline(uid, "d", "c2")
    assert await b.adopt(scanned, NOW_MS, ring_version=2) == []  # the tombstone holds
    assert not (await cluster.locate([uid])).uids()
    assert (await cluster.counts()).total == 0
