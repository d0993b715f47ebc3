"""The controller's per-shard online gauge follows the ring: a shard that left it leaves
the metrics too (a stale figure for a removed shard would add to any sum of the gauge)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from control.common.kv.embedded import EmbeddedKV
from control.common.registry import PreservationPolicy
from control.presence.cluster import PresenceCluster
from control.presence.controller import Controller
from control.presence.model import Presence
from control.presence.ring import RingSpec, ShardSpec
from control.presence.store import EmbeddedShard


def ring(version: int, ids: list[str], previous: list[str] | None = None) -> RingSpec:
    shards = tuple(ShardSpec(i, f"embedded:{i}") for i in ids)
    before = tuple(ShardSpec(i, f"embedded:{i}") for i in previous or [])
    return RingSpec(version, shards, before, "migrating" if before else "stable", vnodes=40)


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


async def test_a_removed_shard_leaves_the_online_gauge(kv: EmbeddedKV) -> None:
    cluster = PresenceCluster(
        ring(1, ["s0", "s1"]), {s: EmbeddedShard(s, 30) for s in ("s0", "s1")}, 30
    )
    ctl = Controller(
        kv,
        cluster,
        prefix="/t",
        identity="solo",
        leader_ttl_s=2,
        sweep_s=0.2,
        reconcile_s=1.0,
        policy=PreservationPolicy(threshold=0.5, window_s=5, grace_s=30),
    )
    registry: CollectorRegistry = ctl.metrics.registry
    for i in range(40):
        await cluster.online(Presence(f"u{i}", "d", "n", f"c{i}"))
    await ctl.reconcile_once()
    gauge = "imctl_presence_shard_online"
    assert registry.get_sample_value(gauge, {"shard": "s1"})

    assert await cluster.apply_ring(ring(2, ["s0"], ["s0", "s1"]))
    await cluster.fence_all()
    for _ in range(10):  # until a pass over s1 moves nothing
        if (await cluster.move_step("s1", "0", 1000)).moved == 0:
            break
    assert await cluster.apply_ring(ring(2, ["s0"]))
    await ctl.reconcile_once()
    assert registry.get_sample_value(gauge, {"shard": "s1"}) is None
    assert registry.get_sample_value(gauge, {"shard": "s0"}) == 40
    await cluster.close()
