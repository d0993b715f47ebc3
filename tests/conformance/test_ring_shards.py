"""The shard side of a live ring (issue 14), held against the embedded and the real Redis
shard alike: fencing of every write and read, and the mover's methods (scan, adopt,
release, tombstones, the move epoch)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from control.presence.model import Presence, StaleRing
from control.presence.redis_store import RedisShard
from control.presence.store import EmbeddedShard, ShardStore
from tests.servers import RedisServer

LIVE = 10**13  # a deadline (ms) far ahead
NOW_MS = 10**12
NOW = NOW_MS / 1000


def entry(uid: str, device: str = "phone", node: str = "n1", conn: str = "c1") -> Presence:
    return Presence(uid, device, node, conn, region="north", platform="ios")


@pytest.fixture(params=["embedded", "redis"])
async def shard(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """One shard on each backend (Any: the new methods are not on ShardStore until the
    ring-core merge)."""
    store: ShardStore
    if request.param == "redis":
        servers: list[RedisServer] = request.getfixturevalue("redis_servers")
        store = RedisShard("s0", servers[0].url, 30, f"rs{uuid.uuid4().hex[:8]}:")
    else:
        store = EmbeddedShard("s0", 30)
    yield store
    await store.close()


async def test_fence_only_raises(shard: Any) -> None:
    assert await shard.served_version() == 0
    assert await shard.fence(3) == 3
    assert await shard.fence(2) == 3
    assert await shard.served_version() == 3


# Every write, called with a ring version; each on a shard holding alice (phone, c1).
WRITES: dict[str, Callable[[Any, int], Awaitable[object]]] = {
    "online": lambda s, v: s.online(entry("bob", conn="b1"), LIVE, NOW, ring_version=v),
    "touch": lambda s, v: s.touch([entry("alice").member], LIVE + 1, ring_version=v),
    "offline": lambda s, v: s.offline("alice", "phone", "c1", "closed", NOW, ring_version=v),
    "offline_tombstone": lambda s, v: s.offline(
        "alice", "phone", "gone", "closed", NOW, ring_version=v, tombstone=True
    ),
    "set_status": lambda s, v: s.set_status("alice", "phone", "c1", "busy", NOW, ring_version=v),
    "replace_out": lambda s, v: s.replace_out("alice", "phone", NOW, ring_version=v),
    "adopt": lambda s, v: s.adopt([(entry("carol", conn="k1"), LIVE)], NOW_MS, ring_version=v),
    "release": lambda s, v: s.release([entry("alice")], ring_version=v),
    "release_scanned": lambda s, v: s.release_scanned([entry("alice")], ring_version=v),
}


async def state(shard: Any) -> tuple[object, ...]:
    """What a write could change: entries, deadlines, counters, events."""
    who = await shard.who("alice", ring_version=10**6)
    found = await shard.locate(["alice", "bob", "carol"], ring_version=10**6)
    entries = sorted((p.uid, p.conn, p.status) for ps in found.values() for p in ps)
    return (entries, [p.last_seen for p in who], await shard.counters(), await shard.latest_event())


@pytest.mark.parametrize("write", sorted(WRITES))
async def test_every_write_is_fenced(shard: Any, write: str) -> None:
    """An older version is refused inside the same call (nothing changes); an equal one
    passes; a newer one passes and becomes the served version."""
    assert await shard.online(entry("alice"), LIVE, NOW, ring_version=5) is None
    before = await state(shard)
    with pytest.raises(StaleRing) as refused:
        await WRITES[write](shard, 4)
    assert refused.value.served == 5 and "ring version 5 is served here" in str(refused.value)
    assert await state(shard) == before
    assert await shard.served_version() == 5
    await WRITES[write](shard, 7)
    assert await shard.served_version() == 7
    with pytest.raises(StaleRing):
        await WRITES[write](shard, 6)


async def test_the_first_write_fences_the_old_writers_out(shard: Any) -> None:
    await shard.online(entry("alice"), LIVE, NOW, ring_version=1)
    await shard.touch([entry("alice").member], LIVE, ring_version=2)  # a client on v2
    with pytest.raises(StaleRing) as refused:
        await shard.online(entry("alice", conn="c2"), LIVE, NOW, ring_version=1)
    assert refused.value.served == 2
    assert [p.conn for p in await shard.who("alice", ring_version=2)] == ["c1"]


async def test_reads_are_fenced_and_never_raise_the_version(shard: Any) -> None:
    await shard.online(entry("alice"), LIVE, NOW, ring_version=3)
    for read in (
        lambda v: shard.locate(["alice"], ring_version=v),
        lambda v: shard.locate([], ring_version=v),
        lambda v: shard.who("alice", ring_version=v),
    ):
        with pytest.raises(StaleRing) as refused:
            await read(2)
        assert refused.value.served == 3
        await read(9)
        assert await shard.served_version() == 3
    assert [p.conn for p in (await shard.locate(["alice"], ring_version=3))["alice"]] == ["c1"]


async def test_logins_of_two_versions_at_once(shard: Any) -> None:
    """Logins that arrive together but were routed by different rings: the older one alone
    is refused."""
    await shard.fence(5)
    old, new = await asyncio.gather(
        shard.online(entry("alice"), LIVE, NOW, ring_version=4),
        shard.online(entry("bob"), LIVE, NOW, ring_version=5),
        return_exceptions=True,
    )
    assert isinstance(old, StaleRing) and new is None
    assert set(await shard.locate(["alice", "bob"], ring_version=5)) == {"bob"}
    assert (await shard.counters()).get("all") == 1


async def test_a_stale_touch_in_many_chunks_leaves_the_shard_usable(shard: Any) -> None:
    members = [entry(f"u{i}").member for i in range(12_000)]  # several script calls
    await shard.fence(2)
    with pytest.raises(StaleRing):
        await shard.touch(members, LIVE, ring_version=1)
    assert len(await shard.touch(members, LIVE, ring_version=2)) == len(members)


async def test_replace_out(shard: Any) -> None:
    await shard.online(entry("alice", conn="old"), LIVE, NOW, ring_version=1)
    await shard.online(entry("alice", device="laptop", conn="l1"), LIVE, NOW, ring_version=1)
    position = await shard.latest_event()
    gone = await shard.replace_out("alice", "phone", NOW, ring_version=1)
    assert gone is not None and (gone.device, gone.conn, gone.node) == ("phone", "old", "n1")
    assert await shard.replace_out("alice", "phone", NOW, ring_version=1) is None
    assert [p.device for p in await shard.who("alice", ring_version=1)] == ["laptop"]
    assert await shard.touch([gone.member], LIVE, ring_version=1) == [gone.member]
    (event,) = await shard.read_events(position, 10, 0)
    assert (event.kind, event.conn, event.reason) == ("offline", "old", "replaced")
    assert await shard.counters() == {"all": 1, "r:north": 1, "n:n1": 1, "p:ios": 1}


async def test_scan_returns_every_entry_with_its_deadline(shard: Any) -> None:
    expected = {}
    for i in range(300):
        p = entry(f"u{i}", conn=f"c{i}", node=f"n{i % 3}")
        await shard.online(p, LIVE + i, NOW, ring_version=1)
        expected[p] = LIVE + i
        if i % 10 == 0:
            laptop = entry(f"u{i}", device="laptop", conn=f"l{i}")
            await shard.online(laptop, LIVE, NOW, ring_version=1)
            expected[laptop] = LIVE
    found: dict[Presence, int] = {}
    cursor, calls = "0", 0
    while True:
        cursor, batch = await shard.scan(cursor, 17)
        for p, deadline in batch:
            found[p._replace(last_seen=0.0)] = deadline
        calls += 1
        assert calls < 1_000, "scan never finished"
        if cursor == "0":
            break
    assert found == expected
    assert calls > 1  # it did walk in batches


async def test_adopt_copies_in_without_events(shard: Any) -> None:
    await shard.online(entry("newer", conn="mine"), LIVE, NOW, ring_version=1)
    position = await shard.latest_event()
    moved = [entry(f"m{i}", node=f"n{i % 2}", conn=f"c{i}") for i in range(20)]
    offered = [(p, LIVE) for p in moved] + [
        (entry("newer", conn="theirs"), LIVE),  # this shard's entry for (uid, device) is newer
        (entry("expired", conn="x"), NOW_MS),  # its deadline has passed
    ]
    adopted = await shard.adopt(offered, NOW_MS, ring_version=1)
    assert sorted(p.uid for p in adopted) == sorted(p.uid for p in moved)
    assert await shard.latest_event() == position  # no events
    found = await shard.locate([p.uid for p in moved] + ["newer", "expired"], ring_version=1)
    assert sorted(found) == sorted([p.uid for p in moved] + ["newer"])
    assert [p.conn for p in found["newer"]] == ["mine"]
    counters = await shard.counters()
    assert counters["all"] == 21 and counters["n:n0"] == 10 and counters["n:n1"] == 11
    # Both indexes hold them: heartbeats find them, and their node's eviction takes them.
    assert await shard.touch([p.member for p in moved], LIVE, ring_version=1) == []
    assert await shard.evict_node("n0", 100, NOW) == 10
    # Adopting again (a mover resumed after a failover) changes nothing.
    assert await shard.adopt([(moved[1], LIVE)], NOW_MS, ring_version=1) == []
    assert (await shard.counters())["all"] == 11


async def test_release_removes_only_the_same_connection(shard: Any) -> None:
    moved = [entry(f"m{i}", conn=f"c{i}") for i in range(10)]
    for p in moved:
        await shard.online(p, LIVE, NOW, ring_version=1)
    await shard.online(entry("m0", conn="again"), LIVE, NOW, ring_version=1)  # logged in again
    position = await shard.latest_event()
    assert await shard.release(moved, ring_version=1) == 9
    assert await shard.release(moved, ring_version=1) == 0
    assert await shard.latest_event() == position  # no events
    found = await shard.locate([p.uid for p in moved], ring_version=1)
    assert list(found) == ["m0"] and found["m0"][0].conn == "again"
    assert await shard.counters() == {"all": 1, "r:north": 1, "n:n1": 1, "p:ios": 1}
    gone = [p.member for p in moved[1:]]
    assert sorted(await shard.touch(gone, LIVE, ring_version=1)) == sorted(gone)
    swept = await shard.sweep(LIVE + 1, 100, NOW)  # only m0's newer entry is still indexed
    assert [p.conn for p in swept] == ["again"]
    assert await shard.counters() == {}


async def test_release_scanned_removes_only_the_record_scanned(shard: Any) -> None:
    """The mover's release compares the whole record: a status set after the scan keeps
    the entry (and says so), another device of the same user is left alone."""
    moved = [entry(f"m{i}", node=f"n{i % 2}", conn=f"c{i}") for i in range(10)]
    for p in moved:
        await shard.online(p, LIVE, NOW, ring_version=1)
    await shard.online(entry("m1", "laptop", conn="other"), LIVE, NOW, ring_version=1)
    assert await shard.set_status("m0", "phone", "c0", "busy", NOW, ring_version=1)
    position = await shard.latest_event()
    skipped = await shard.release_scanned([*moved, entry("ghost")], ring_version=1)
    assert skipped == [moved[0], entry("ghost")]
    assert await shard.latest_event() == position  # no events
    found = await shard.locate([p.uid for p in moved], ring_version=1)
    assert sorted((p.uid, p.device, p.status) for u in found for p in found[u]) == [
        ("m0", "phone", "busy"),
        ("m1", "laptop", "online"),
    ]
    assert await shard.counters() == {"all": 2, "r:north": 2, "n:n0": 1, "n:n1": 1, "p:ios": 2}
    gone = [p.member for p in moved[1:]]
    assert sorted(await shard.touch(gone, LIVE, ring_version=1)) == sorted(gone)
    assert await shard.evict_node("n1", 100, NOW) == 1  # the laptop: the rest left n1
    assert await shard.release_scanned(moved, ring_version=1) == moved


async def test_a_tombstone_keeps_an_offline_connection_out(shard: Any) -> None:
    # The connection went offline on its new owner before the mover's copy arrived.
    assert not await shard.offline(
        "alice", "phone", "c1", "closed", NOW, ring_version=1, tombstone=True
    )
    assert not await shard.offline("bob", "phone", "c1", "closed", NOW, ring_version=1)
    late = [(entry("alice"), LIVE), (entry("bob"), LIVE), (entry("alice", "laptop"), LIVE)]
    adopted = await shard.adopt(late, NOW_MS, ring_version=1)
    assert sorted((p.uid, p.device) for p in adopted) == [("alice", "laptop"), ("bob", "phone")]
    # A tombstone names one connection: a newer one of the same device is adopted.
    assert await shard.adopt([(entry("alice", conn="c2"), LIVE)], NOW_MS, ring_version=1)


async def test_a_tombstone_is_left_beside_another_connection_s_entry(shard: Any) -> None:
    await shard.online(entry("alice", conn="c2"), LIVE, NOW, ring_version=1)
    assert not await shard.offline(
        "alice", "phone", "c1", "closed", NOW, ring_version=1, tombstone=True
    )
    assert await shard.offline("alice", "phone", "c2", "closed", NOW, ring_version=1)
    assert await shard.adopt([(entry("alice", conn="c1"), LIVE)], NOW_MS, ring_version=1) == []


async def test_move_epoch(shard: Any) -> None:
    assert await shard.move_epoch() == 0
    assert await shard.bump_move_epoch() == 1
    assert await shard.bump_move_epoch() == 2
    assert await shard.move_epoch() == 2
