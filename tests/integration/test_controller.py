"""The presence controller on both backend pairs: embedded store + embedded presence, and
real etcd + real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.kv.etcd import EtcdKV
from control.common.registry import NodeRecord, PreservationPolicy, Registry
from control.presence.cluster import PresenceCluster, build_cluster
from control.presence.controller import Controller
from control.presence.model import Presence


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
        reconcile_s=1.0,
        policy=PreservationPolicy(threshold=0.5, window_s=5, grace_s=30),
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


async def test_dead_node_users_go_offline_within_ttl_plus_2s(backends: Any, prefix: str) -> None:
    kv, presence = backends
    registry = Registry(kv, prefix)
    stop = asyncio.Event()
    alive_reg = await registry.register(node("alive"), ttl=2)
    keeper = asyncio.create_task(alive_reg.run(stop))
    await registry.register(node("doomed"), ttl=2)  # never refreshed: dies in 2 s
    died_at = time.monotonic() + 2
    for i in range(300):
        await presence.online(Presence(f"u{i}", "d", "doomed" if i % 3 else "alive", f"c{i}"))
    ctl = controller(kv, presence, prefix, "solo")
    await ctl.start()
    try:
        deadline = died_at + 2 + 1.5  # TTL + 2 s, plus the etcd expiry tick
        while (await presence.counts()).by_node.get("doomed"):
            assert time.monotonic() < deadline, "doomed node's users still online"
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
