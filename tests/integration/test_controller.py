"""The presence controller on both backend pairs: embedded store + embedded presence, and
real etcd + real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.kv.etcd import EtcdKV
from control.common.registry import NodeRecord, PreservationPolicy, Registry
from control.presence.cluster import PresenceCluster
from control.presence.controller import Controller
from control.presence.model import Presence
from control.presence.shards import build_cluster
from control.testing import EtcdServer, RedisServer, until


@pytest.fixture(params=["embedded", "real"])
async def backends(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[KeyValueStore, PresenceCluster]]:
    tag = uuid.uuid4().hex[:8]
    kv: KeyValueStore
    if request.param == "embedded":
        kv = EmbeddedKV()
        presence = build_cluster([("s0", "", 1)], "embedded", timeout_s=3, key_prefix=tag)
    else:
        etcd = request.getfixturevalue("etcd_server")
        redis = request.getfixturevalue("redis_servers")
        kv = EtcdKV(etcd.endpoint)
        presence = build_cluster(
            [(f"s{i}", r.url, 1) for i, r in enumerate(redis)],
            "redis",
            timeout_s=3,
            key_prefix=f"{tag}:",
        )
    await kv.connect()
    yield kv, presence
    await presence.close()
    await kv.close()


def controller(
    kv: KeyValueStore, presence: PresenceCluster, prefix: str, name: str, **kw: Any
) -> Controller:
    return Controller(
        kv,
        presence,
        prefix=prefix,
        identity=name,
        leader_ttl_s=2,
        sweep_s=0.2,
        reconcile_s=kw.pop("reconcile_s", 1.0),
        policy=kw.pop("policy", PreservationPolicy(threshold=0.5, window_s=5, grace_s=30)),
        **kw,
    )


def node(nid: str) -> NodeRecord:
    return NodeRecord(id=nid, endpoint=f"ws://h/{nid}", region="r")


async def test_one_leader_and_failover(backends: Any, prefix: str) -> None:
    kv, presence = backends
    a = controller(kv, presence, prefix, "a")
    b = controller(kv, presence, prefix, "b")
    assert await a.election.run_once() == "became leader"
    assert (await b.election.run_once()).startswith("follower of a")
    assert a.election.leader and not b.election.leader
    await kv.revoke_lease(a.election.lease or 0)  # a's lease lapses (a hung, partitioned...)
    assert await b.election.run_once() == "became leader"
    assert not (await a.election.run_once()).startswith("leader")
    assert not a.election.leader


async def test_a_leader_cut_off_keeps_its_lease_and_leads_again_at_once(
    backends: Any, prefix: str
) -> None:
    kv, presence = backends
    a = controller(kv, presence, prefix, "a")
    b = controller(kv, presence, prefix, "b")
    assert await a.election.run_once() == "became leader"
    a.election.unavailable(BackendUnavailable("cut off"))
    assert not a.election.leader  # it stops acting while it cannot renew
    assert (await b.election.run_once()).startswith("follower of a")  # the key lives on
    assert await a.election.run_once() == "leader again"  # no wait for its key to expire
    a.election.unavailable(BackendUnavailable("cut off"))
    await kv.revoke_lease(a.election.lease or 0)  # this time the lease lapsed meanwhile
    assert await b.election.run_once() == "became leader"
    assert (await a.election.run_once()).startswith("follower of b")
    assert a.election.lease is None and not a.election.leader


async def test_dead_node_users_go_offline_within_ttl_plus_window_plus_2s(
    backends: Any, prefix: str
) -> None:
    kv, presence = backends
    registry = Registry(kv, prefix)
    stop = asyncio.Event()
    alive_reg = await registry.register(node("alive"), ttl=2)
    keeper = asyncio.create_task(alive_reg.run(stop))
    await registry.register(node("doomed"), ttl=2)  # never refreshed: dies in 2 s
    died_at = time.monotonic() + 2
    users = [Presence(f"u{i}", "d", "doomed" if i % 3 else "alive", f"c{i}") for i in range(300)]
    for p in users:
        await presence.online(p)
    window = 1.0
    ctl = controller(
        kv, presence, prefix, "solo", policy=PreservationPolicy(0.5, window_s=window, grace_s=30)
    )
    await ctl.start()
    try:
        deadline = died_at + window + 2 + 1.5  # TTL + window + 2 s, plus the etcd expiry tick
        while (await presence.counts()).by_node.get("doomed"):
            assert time.monotonic() < deadline, "doomed node's users still online"
            await presence.touch([(p.uid, p.device, p.conn) for p in users])  # not the sweep
            await asyncio.sleep(0.1)
        counts = await presence.counts()
        assert counts.total == 100 and counts.by_node == {"alive": 100}
        assert ctl.metrics.evicted._value.get() == 200
    finally:
        stop.set()
        await keeper
        await ctl.stop()


async def test_sweep_expires_silent_entries(backends: Any, prefix: str) -> None:
    kv, presence = backends
    ctl = controller(kv, presence, prefix, "solo")
    await ctl.election.run_once()
    await presence.online(Presence("quiet", "d", "n", "c1"))
    await presence.online(Presence("chatty", "d", "n", "c2"))
    for _ in range(8):  # 4 s; the timeout is 3 s
        await presence.touch([("chatty", "d", "c2")])
        await asyncio.sleep(0.5)
    assert await ctl.sweep_once() == 1
    assert set(await presence.locate(["quiet", "chatty"])) == {"chatty"}


async def test_follower_does_not_act_and_orphans_are_reconciled(backends: Any, prefix: str) -> None:
    kv, presence = backends
    leader = controller(kv, presence, prefix, "a")
    follower = controller(kv, presence, prefix, "b")
    await leader.election.run_once()
    await follower.election.run_once()
    for c in (leader, follower):
        c.on_nodes({"live": node("live")})
    await presence.online(Presence("u1", "d", "ghost", "c1"))  # its node never registered
    await presence.online(Presence("u2", "d", "live", "c2"))
    assert await follower.reconcile_once() == []
    assert (await presence.counts()).total == 2
    assert await leader.reconcile_once() == ["ghost"]
    assert (await presence.counts()).by_node == {"live": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_ten_nodes_lost_one_by_one_evict_nobody_until_grace_ends(
    backends: Any, prefix: str
) -> None:
    """The reported replay: 6 of 10 nodes deleted one by one, 0.5 s apart. Before, the
    controller applied the first 5 deletions (evicting their users) before the hold."""
    kv, presence = backends
    clock = Clock()
    ctl = controller(kv, presence, prefix, "solo", clock=clock)
    await ctl.election.run_once()
    alive = {f"n{i}": node(f"n{i}") for i in range(10)}
    ctl.on_nodes(dict(alive))
    for i in range(10):
        await presence.online(Presence(f"u{i}", "d", f"n{i}", f"c{i}"))
    for i in range(6):
        clock.now += 0.5
        del alive[f"n{i}"]
        ctl.on_nodes(dict(alive))
        await ctl.run_once()
        assert (await presence.counts()).total == 10, f"users evicted after {i + 1} losses"
    assert ctl.view.held_since == 3.0
    clock.now = 3.0 + 29.9  # grace is 30 s
    await ctl.run_once()
    assert (await presence.counts()).total == 10
    clock.now = 3.0 + 30
    assert "evicted 6" in await ctl.run_once()  # at the deadline, no registry change needed
    assert (await presence.counts()).by_node == {f"n{i}": 1 for i in range(6, 10)}


async def test_single_loss_is_evicted_after_the_window_not_before(
    backends: Any, prefix: str
) -> None:
    kv, presence = backends
    clock = Clock()
    ctl = controller(kv, presence, prefix, "solo", clock=clock)
    await ctl.election.run_once()
    ctl.on_nodes({"a": node("a"), "b": node("b"), "c": node("c")})
    await presence.online(Presence("u", "d", "c", "c1"))
    ctl.on_nodes({"a": node("a"), "b": node("b")})
    await ctl.run_once()
    assert (await presence.counts()).total == 1
    assert await ctl.reconcile_once() == []  # pending, not an orphan
    clock.now = 5  # the window
    await ctl.run_once()
    assert (await presence.counts()).total == 0


async def test_a_held_node_is_evicted_by_the_timer_at_the_end_of_grace(
    backends: Any, prefix: str
) -> None:
    """Real leases on a real loop: 3 of 4 nodes die at once; their users stay through the
    grace, then go offline at its end with no registry change to prompt it (before, only
    the heartbeat sweep took them)."""
    kv, presence = backends
    registry = Registry(kv, prefix)
    stop = asyncio.Event()
    survivor = await registry.register(node("alive"), ttl=2)
    keeper = asyncio.create_task(survivor.run(stop))
    for i in range(3):
        await registry.register(node(f"doomed{i}"), ttl=2)  # never refreshed
    users = [
        Presence(f"u{i}", "d", f"doomed{i % 3}" if i % 4 else "alive", f"c{i}") for i in range(40)
    ]
    for p in users:
        await presence.online(p)
    ctl = Controller(
        kv,
        presence,
        prefix=prefix,
        identity="solo",
        leader_ttl_s=2,
        sweep_s=0.2,
        reconcile_s=30.0,  # the periodic pass must not be what evicts them
        policy=PreservationPolicy(threshold=0.5, window_s=1, grace_s=3),
    )
    await ctl.start()
    try:
        deadline = time.monotonic() + 8
        while ctl.view.held_since is None:
            assert time.monotonic() < deadline, "no hold began"
            await presence.touch([(p.uid, p.device, p.conn) for p in users])  # not the sweep
            await asyncio.sleep(0.1)
        held_at = time.monotonic()
        while (await presence.counts()).total == 40:
            assert time.monotonic() < held_at + 3 + 1.5, "held users still online after grace"
            assert ctl.view.held_since is not None or time.monotonic() >= held_at + 2.9
            await presence.touch([(p.uid, p.device, p.conn) for p in users])
            await asyncio.sleep(0.1)
        assert time.monotonic() >= held_at + 2.9, "evicted during the grace"
        # The three nodes go one after another (one sweep each): the first drop in the
        # count is not the last; all three follow within a second, none is left.
        counts = await presence.counts()
        deadline = time.monotonic() + 1.0
        while counts.by_node != {"alive": 10} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            counts = await presence.counts()
        assert counts.by_node == {"alive": 10}
        assert ctl.metrics.evicted._value.get() == 30 and ctl.metrics.expired._value.get() == 0
    finally:
        stop.set()
        await keeper
        await ctl.stop()


async def test_a_new_leader_evicts_orphans_at_its_first_pass(backends: Any, prefix: str) -> None:
    """A (re)started controller takes a node's users offline as soon as it leads when the
    node died before it started, not at the next reconcile tick (here 30 s away)."""
    kv, presence = backends
    registry = Registry(kv, prefix)
    stop = asyncio.Event()
    live = await registry.register(node("live"), ttl=2)
    keeper = asyncio.create_task(live.run(stop))
    await presence.online(Presence("u1", "d", "ghost", "c1"))  # died before we started
    await presence.online(Presence("u2", "d", "live", "c2"))
    ctl = controller(kv, presence, prefix, "solo", reconcile_s=30.0)
    started = time.monotonic()
    await ctl.start()
    try:
        while not ctl.election.leader:
            assert time.monotonic() < started + 5, "never led"
            await asyncio.sleep(0.02)
        led = time.monotonic()
        while (await presence.counts()).by_node.get("ghost"):
            assert time.monotonic() < led + 1, "orphan not evicted at the first pass"
            await asyncio.sleep(0.05)
        assert (await presence.counts()).by_node == {"live": 1}
    finally:
        stop.set()
        await keeper
        await ctl.stop()


async def test_leads_again_soon_after_etcd_returns_and_evicts_a_node_that_died_meanwhile(
    own_etcd: EtcdServer, redis_servers: list[RedisServer], prefix: str
) -> None:
    """etcd killed for 4 s while a node dies. When etcd is back the controller leads again
    as soon as its client reconnects, not after its old key's lease TTL (5 s; etcd restores
    every lease with its full TTL): it kept its lease id through the outage and retries
    every 0.5 s (before: 7 s). Then the dead node's lease lapses, the registry watch
    resumes, and its users are evicted one window later."""
    kv = EtcdKV(own_etcd.endpoint, timeout_s=2)
    presence = build_cluster(
        [(f"s{i}", r.url, 1) for i, r in enumerate(redis_servers)],
        "redis",
        timeout_s=60,
        key_prefix=f"{prefix}:",
    )
    await kv.connect()
    registry = Registry(kv, prefix)
    stop_live, stop_doomed = asyncio.Event(), asyncio.Event()
    keepers = []
    for name, stop in (("live", stop_live), ("doomed", stop_doomed)):
        reg = await registry.register(node(name), ttl=2)
        keepers.append(asyncio.create_task(reg.run(stop)))
    await presence.online(Presence("u1", "d", "live", "c1"))
    await presence.online(Presence("u2", "d", "doomed", "c2"))
    window = 1.0
    ctl = Controller(
        kv,
        presence,
        prefix=prefix,
        identity="solo",
        leader_ttl_s=LEADER_TTL,
        sweep_s=0.2,
        reconcile_s=30.0,
        policy=PreservationPolicy(0.5, window_s=window, grace_s=30),
    )
    await ctl.start()
    try:
        await until(lambda: ctl.election.leader, 5, "first leadership")
        own_etcd.kill()
        stop_doomed.set()  # the node dies while etcd is down
        await until(lambda: not ctl.election.leader, 5, "stepping down")
        await asyncio.sleep(4 - 2)
        await asyncio.to_thread(own_etcd.start)
        back = time.monotonic()
        took = await until(lambda: ctl.election.leader, LEADER_TTL + 4, "leading again")
        print(f"led again {took:.2f}s after etcd returned")
        # retry_s (0.5 s) + the client's reconnect (the etcd client's own backoff, <= 2 s)
        assert took <= 3, f"led again {took:.1f}s after etcd returned"
        while (await presence.counts()).by_node.get("doomed"):
            elapsed = time.monotonic() - back
            # node lease TTL + window + the registry watch's resume backoff (PrefixMirror:
            # at most 5 s x 1.5 jitter) + 1 s
            bound = 2 + window + 7.5 + 1
            assert elapsed < bound, f"doomed users still online after {elapsed:.1f}s"
            await asyncio.sleep(0.1)
        print(f"evicted {time.monotonic() - back:.2f}s after etcd returned")
        assert (await presence.counts()).by_node == {"live": 1}
    finally:
        stop_live.set()
        stop_doomed.set()
        await asyncio.gather(*keepers, return_exceptions=True)
        await ctl.stop()
        await presence.close()
        await kv.close()


LEADER_TTL = 5  # the default; long enough that waiting out the old key would show
