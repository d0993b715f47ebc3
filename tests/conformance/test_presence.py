"""The presence contract, held against embedded shards and real Redis shards alike."""

from __future__ import annotations

import asyncio

import pytest

from control.common.errors import BadRequest
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence, PresenceEvent


def entry(
    uid: str, device: str = "phone", node: str = "n1", conn: str = "c1", **kw: object
) -> Presence:
    base: dict[str, object] = {"region": "north", "platform": "ios"}
    base.update(kw)
    return Presence(uid=uid, device=device, node=node, conn=conn, **base)  # type: ignore[arg-type]


async def test_online_locate_offline(presence: PresenceCluster) -> None:
    assert await presence.online(entry("alice")) is None
    await presence.online(entry("alice", device="laptop", node="n2", conn="c2"))
    await presence.online(entry("bob", node="n2", conn="c3"))
    found = await presence.locate(["alice", "bob", "carol"])
    assert sorted((p.device, p.node, p.conn) for p in found["alice"]) == [
        ("laptop", "n2", "c2"),
        ("phone", "n1", "c1"),
    ]
    assert [p.conn for p in found["bob"]] == ["c3"] and "carol" not in found
    assert await presence.offline("alice", "phone", "c1")
    assert [p.device for p in (await presence.locate(["alice"]))["alice"]] == ["laptop"]


async def test_stale_disconnect_never_removes_newer_login(presence: PresenceCluster) -> None:
    await presence.online(entry("alice", conn="old"))
    replaced = await presence.online(entry("alice", node="n2", conn="new"))
    assert replaced is not None and (replaced.node, replaced.conn) == ("n1", "old")
    assert not await presence.offline("alice", "phone", "old")  # the late disconnect
    (p,) = (await presence.locate(["alice"]))["alice"]
    assert (p.node, p.conn) == ("n2", "new")
    assert not await presence.set_status("alice", "phone", "old", "busy")


async def test_exact_counts(presence: PresenceCluster) -> None:
    for i in range(30):
        await presence.online(
            entry(
                f"u{i}",
                node=f"n{i % 3}",
                region=("north", "south")[i % 2],
                platform=("ios", "android", "web")[i % 3],
                conn=f"c{i}",
            )
        )
    await presence.online(entry("u0", node="n9", conn="again", region="south"))  # replaces
    await presence.offline("u1", "phone", "c1")
    counts = await presence.counts()
    assert counts.total == 29
    assert counts.by_node == {"n0": 9, "n1": 9, "n2": 10, "n9": 1}
    assert sum(counts.by_region.values()) == 29 and counts.by_region["south"] == 15
    assert counts.by_platform == {"ios": 10, "android": 9, "web": 10}


async def test_touch_keeps_and_sweep_expires(presence: PresenceCluster) -> None:
    now = [1_000_000.0]
    presence.clock = lambda: now[0]
    await presence.online(entry("kept", conn="k"))
    await presence.online(entry("silent", conn="s"))
    now[0] += 20
    assert await presence.touch([("kept", "phone", "k"), ("ghost", "phone", "g")]) == [
        ("ghost", "phone", "g")
    ]
    now[0] += 15  # silent: 35 s > 30 s timeout; kept: 15 s since its heartbeat
    gone = await presence.sweep()
    assert [p.uid for p in gone] == ["silent"]
    assert set(await presence.locate(["kept", "silent"])) == {"kept"}
    (who,) = await presence.who("kept")
    assert who.last_seen == pytest.approx(now[0] - 15, abs=0.01)
    assert (await presence.counts()).total == 1


async def test_touch_big_batch_names_exactly_the_missing(presence: PresenceCluster) -> None:
    """Thousands of heartbeats in one batch (several chunks in a shard's script) with gone
    entries scattered through it, then the same batch again at the same instant: the
    missing ones are named every time, and the live ones never are."""
    now = [2_000_000.0]
    presence.clock = lambda: now[0]
    live = [(f"b{i}", "phone", f"c{i}") for i in range(2_500)]
    for start in range(0, len(live), 500):
        await asyncio.gather(
            *(presence.online(entry(u, conn=c)) for u, _, c in live[start : start + 500])
        )
    gone = [(f"gone{i}", "phone", f"g{i}") for i in range(0, 2_500, 401)]
    batch = live[:1_200] + gone[:3] + live[1_200:] + gone[3:]
    now[0] += 10
    assert sorted(await presence.touch(batch)) == sorted(gone)
    # Same deadline again: the scores do not change, which must not read as "missing".
    assert sorted(await presence.touch(batch)) == sorted(gone)
    now[0] += 25  # 25 s after the heartbeats, 35 s after the logins: all still live
    assert await presence.sweep() == []
    assert (await presence.counts()).total == len(live)


async def test_heartbeat_after_offline_does_not_resurrect(presence: PresenceCluster) -> None:
    await presence.online(entry("alice", conn="c1"))
    await presence.offline("alice", "phone", "c1")
    assert await presence.touch([("alice", "phone", "c1")]) == [("alice", "phone", "c1")]
    assert await presence.locate(["alice"]) == {}


async def test_evict_node(presence: PresenceCluster) -> None:
    for i in range(250):
        await presence.online(entry(f"u{i}", node="dead" if i % 5 else "alive", conn=f"c{i}"))
    await presence.online(entry("u1", node="alive", conn="moved"))  # moved before the death
    removed = await presence.evict_node("dead", batch=37)
    assert removed == 199
    counts = await presence.counts()
    assert counts.by_node == {"alive": 51} and counts.total == 51
    assert (await presence.locate(["u1"]))["u1"][0].conn == "moved"


async def test_status(presence: PresenceCluster) -> None:
    await presence.online(entry("alice"))
    assert await presence.set_status("alice", "phone", "c1", "busy")
    (p,) = await presence.who("alice")
    assert p.status == "busy"
    with pytest.raises(BadRequest):
        await presence.set_status("alice", "phone", "c1", "sleeping")


def follow(
    presence: PresenceCluster, count: int, block_ms: int
) -> tuple[asyncio.Task[None], list[PresenceEvent], asyncio.Event]:
    """Collect the next ``count`` events in a task; the test writes, then awaits it."""
    seen: list[PresenceEvent] = []
    stop = asyncio.Event()

    async def run() -> None:
        async for event in presence.events(block_ms=block_ms, stop=stop):
            seen.append(event)
            if len(seen) == count:
                return

    return asyncio.create_task(run()), seen, stop


async def test_event_stream(presence: PresenceCluster) -> None:
    task, seen, stop = follow(presence, 5, block_ms=100)
    await asyncio.sleep(0.3)
    await presence.online(entry("alice", conn="a"))
    await presence.online(entry("bob", conn="b"))
    await presence.set_status("bob", "phone", "b", "away")
    await presence.online(entry("alice", conn="a2"))  # offline(replaced) + online
    await asyncio.wait_for(task, 5)
    stop.set()
    alice = [(e.kind, e.conn, e.reason) for e in seen if e.uid == "alice"]
    assert alice == [("online", "a", ""), ("offline", "a", "replaced"), ("online", "a2", "")]
    assert [(e.kind, e.reason) for e in seen if e.uid == "bob"] == [
        ("online", ""),
        ("status", "away"),
    ]


async def test_event_stream_loses_nothing_between_reads(presence: PresenceCluster) -> None:
    """Reads that time out while events keep arriving must not skip any (a follower that
    re-resolved "latest" on every read lost the events written in between)."""
    task, seen, stop = follow(presence, 60, block_ms=2)
    await asyncio.sleep(0.05)
    for i in range(60):
        await presence.online(entry(f"user-{i}", conn=f"c{i}"))
        await asyncio.sleep(0.002 * (i % 3))
    await asyncio.wait_for(task, 5)
    stop.set()
    assert sorted(e.uid for e in seen) == sorted(f"user-{i}" for i in range(60))


@pytest.mark.parametrize("sep", ["\x1f", "\x1e"])
async def test_rejects_separator_in_ids(presence: PresenceCluster, sep: str) -> None:
    for field in ("uid", "device", "node", "conn", "region", "platform"):
        with pytest.raises(BadRequest) as err:
            await presence.online(entry("alice")._replace(**{field: f"x{sep}y"}))
        assert err.value.field == field
    assert (await presence.counts()).total == 0


async def test_locate_many_across_shards(presence: PresenceCluster) -> None:
    uids = [f"user-{i}" for i in range(500)]
    for i, uid in enumerate(uids):
        await presence.online(entry(uid, conn=f"c{i}"))
    found = await presence.locate(uids + ["nobody"])
    assert len(found) == 500 and all(found[u][0].uid == u for u in uids)
    if isinstance(presence, PresenceCluster):
        owners = {presence.ring.owner(u) for u in uids}
        assert owners == {"s0", "s1"}  # the ring really spreads users
    else:  # Redis Cluster: users spread over buckets whose slots all three masters serve
        client = presence.client
        masters = {client.get_node_from_key(presence.bucket(u).k_exp).name for u in uids}
        assert len(masters) == 3


async def test_locate_large_batch(presence: PresenceCluster) -> None:
    """More uids than one MGET carries per shard (they go out in several pipelined chunks);
    the few online ones come back, every record whole, the rest are simply absent."""
    online = {f"user-{i}" for i in range(0, 12_000, 997)}
    for i, uid in enumerate(sorted(online)):
        await presence.online(entry(uid, device=f"d{i % 2}", conn=f"c{i}"))
    await presence.online(entry("user-0", device="laptop", node="n9", conn="c-laptop"))
    found = await presence.locate([f"user-{i}" for i in range(12_000)])
    assert set(found) == online
    assert sorted(e.device for e in found["user-0"]) == ["d0", "laptop"]
    assert found.by_node()["n9"] == {"user-0"}


async def test_a_uid_asked_twice_is_answered_once(presence: PresenceCluster) -> None:
    await presence.online(entry("alice", device="phone", conn="c1"))
    await presence.online(entry("alice", device="laptop", node="n2", conn="c2"))
    await presence.online(entry("bob", conn="c3"))
    found = await presence.locate(["alice", "bob", "alice", "nobody", "bob"])
    assert sorted(e.conn for e in found["alice"]) == ["c1", "c2"]
    assert [e.conn for e in found["bob"]] == ["c3"] and len(found) == 2
    assert found.by_node() == {"n1": {"alice", "bob"}, "n2": {"alice"}}


async def test_empty_fields_survive_in_a_multi_device_record(presence: PresenceCluster) -> None:
    """Records sit back to back in one value, so an empty last field must not shift the
    next record's fields."""
    await presence.online(entry("alice", device="phone", conn="c1", region="", platform=""))
    await presence.online(entry("alice", device="laptop", node="n2", conn="c2"))
    found = {p.device: p for p in (await presence.locate(["alice"]))["alice"]}
    assert (found["phone"].region, found["phone"].platform, found["phone"].conn) == ("", "", "c1")
    assert (found["laptop"].node, found["laptop"].platform) == ("n2", "ios")
    assert await presence.offline("alice", "phone", "c1")
    (left,) = (await presence.locate(["alice"]))["alice"]
    assert (left.device, left.conn, left.platform) == ("laptop", "c2", "ios")


async def test_locations_group_by_node(presence: PresenceCluster) -> None:
    await presence.online(entry("a", node="n1", conn="c1"))
    await presence.online(entry("a", device="laptop", node="n2", conn="c2"))
    await presence.online(entry("b", node="n2", conn="c3"))
    found = await presence.locate(["a", "b", "c"])
    assert found.uids() == {"a", "b"}
    assert found.by_node() == {"n1": {"a"}, "n2": {"a", "b"}}
    assert sorted(p.node for p in found["a"]) == ["n1", "n2"] and len(found) == 2


async def test_concurrent_logins_batch_correctly(presence: PresenceCluster) -> None:
    results = await asyncio.gather(
        *(presence.online(entry(f"u{i}", conn=f"c{i}")) for i in range(600)),
        presence.online(entry("twice", conn="first")),
        presence.online(entry("twice", conn="second")),
    )
    assert all(r is None for r in results[:601])
    assert results[601] is not None and results[601].conn == "first"
    counts = await presence.counts()
    assert counts.total == 601
    assert [p.conn for p in (await presence.locate(["twice"]))["twice"]] == ["second"]
