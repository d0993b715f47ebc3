"""The controller runs the ring mover only while it leads (supervised task "ring-mover"),
a new leader resumes where the old one stopped, and the ring metrics are in its registry.

The status cluster is the real one on embedded shards (tests/unit/test_mover.py's
``Recorded``), shared by the controller and its mover as launch shares it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from control.common.kv.embedded import EmbeddedKV
from control.common.registry import NodeRecord, PreservationPolicy, Registry
from control.presence.cluster import PresenceCluster
from control.presence.controller import Controller, RingCollector
from control.presence.model import Presence
from control.presence.mover import Mover
from control.presence.ring import RingSpec, ShardSpec
from control.presence.shards import build_cluster
from tests.unit.test_mover import resized


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


@pytest.fixture
async def presence() -> AsyncIterator[PresenceCluster]:
    cluster = build_cluster([("s0", "", 1), ("s1", "", 1)], "embedded", 30, "t:")
    yield cluster
    await cluster.close()


def controller(kv: EmbeddedKV, presence: PresenceCluster, name: str, mover: Mover) -> Controller:
    return Controller(
        kv,
        presence,
        prefix="/t",
        identity=name,
        leader_ttl_s=2,
        sweep_s=0.2,
        reconcile_s=1.0,
        policy=PreservationPolicy(threshold=0.5, window_s=5, grace_s=30),
        mover=mover,
        mover_idle_s=0.05,
    )


def sample(registry: object, name: str, **labels: str) -> float | None:
    from prometheus_client import CollectorRegistry

    assert isinstance(registry, CollectorRegistry)
    return registry.get_sample_value(name, labels or None)


async def test_only_the_leader_moves_and_the_next_leader_resumes(kv: EmbeddedKV) -> None:
    store, cluster, clock = await resized(kv, users=800)
    a_mover = Mover(cluster, store, "a", clock, clock.sleep, batch=40)
    b_mover = Mover(cluster, store, "b", clock, clock.sleep, batch=40)
    a = controller(kv, cluster, "a", a_mover)
    b = controller(kv, cluster, "b", b_mover)
    assert await a.election.run_once() == "became leader"
    assert (await b.election.run_once()).startswith("follower of a")
    for _ in range(10):
        assert (await b.move_once()) == "not the leader: not moving"
        await a.move_once()
        clock.now += 0.3  # progress is written every second of this
    assert b_mover.moved_total == 0 and a_mover.moved_total > 0
    assert sample(a.metrics.registry, "imctl_presence_ring_moved_total") == a_mover.moved_total
    stored = await store.read_progress()
    assert stored is not None and stored.by == "a" and stored.cursors
    # a's lease lapses mid-migration (killed): b leads and finishes from a's cursors.
    await kv.revoke_lease(a.election.lease or 0)
    assert await b.election.run_once() == "became leader"
    await a.election.run_once()
    assert await a.move_once() == "not the leader: not moving"
    for _ in range(200):
        if "is stable" in await b.move_once():
            break
    else:
        raise AssertionError("b never finished the migration")
    assert await cluster.misplaced() == []
    assert (await cluster.counts()).total == 800  # none lost on the way
    progress = await store.read_progress()
    assert progress is not None and progress.by == "b" and progress.state == "stable"
    ring = await store.ring()
    assert ring is not None and ring.record is not None and not ring.record.migrating
    assert sample(b.metrics.registry, "imctl_presence_ring_remaining") == 0
    assert b_mover.moved_total > 0


async def test_the_ring_mover_task_finishes_a_migration_on_its_own(kv: EmbeddedKV) -> None:
    store, cluster, clock = await resized(kv, users=300)
    # The users' node is alive: the controller keeps them (no orphan eviction).
    await Registry(kv, "/t").register(NodeRecord(id="n1", endpoint="ws://h/n1", region="r"), 30)
    ctl = controller(kv, cluster, "solo", Mover(cluster, store, "solo", clock, clock.sleep))
    await ctl.start()
    try:
        assert "ring-mover" in ctl.supervisor.alive()
        deadline = time.monotonic() + 10
        while True:
            ring = await store.ring()
            assert ring is not None and ring.record is not None
            if not ring.record.migrating:
                break
            assert time.monotonic() < deadline, "the ring never became stable"
            await asyncio.sleep(0.05)
        assert await cluster.misplaced() == []
        assert (await cluster.counts()).total == 300  # none lost on the way
        assert ctl.supervisor.alive()["ring-mover"]
    finally:
        await ctl.stop()


@dataclass
class Stats:
    ops: int
    errors: int
    breaker: str
    dropped_heartbeats: int


@dataclass
class ClusterStats:
    shards: dict[str, Stats]


class RingAware:
    spec = RingSpec(7, (ShardSpec("s0"), ShardSpec("s1")), (ShardSpec("s0"),), "migrating")
    stats = ClusterStats({"s0": Stats(10, 1, "closed", 0), "s1": Stats(4, 3, "open", 2)})


def test_ring_and_shard_figures_are_scraped_from_the_cluster() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(RingCollector(RingAware()))
    text = generate_latest(registry).decode()
    assert "imctl_presence_ring_version 7.0" in text
    assert "imctl_presence_ring_migrating 1.0" in text
    assert 'imctl_presence_shard_ops_total{shard="s0"} 10.0' in text
    assert 'imctl_presence_shard_errors_total{shard="s1"} 3.0' in text
    assert 'imctl_presence_heartbeats_dropped_total{shard="s1"} 2.0' in text
    assert 'imctl_presence_shard_breaker{shard="s1",state="open"} 1.0' in text
    assert 'imctl_presence_shard_breaker{shard="s1",state="closed"} 0.0' in text


async def test_online_users_per_shard(kv: EmbeddedKV, presence: PresenceCluster) -> None:
    store, cluster, clock = await resized(kv, users=10)
    ctl = controller(kv, presence, "solo", Mover(cluster, store, "solo", clock, clock.sleep))
    for i in range(50):
        await presence.online(Presence(f"u{i}", "d", "n", f"c{i}"))
    await ctl.reconcile_once()
    per_shard = {
        sid: sample(ctl.metrics.registry, "imctl_presence_shard_online", shard=sid)
        for sid in ("s0", "s1")
    }
    assert all(n for n in per_shard.values()) and sum(per_shard.values()) == 50  # type: ignore[arg-type]
