"""Every process follows the ring key: a new spec reaches ``cluster.apply_ring`` (the real
RingStore on the embedded key-value store; a fake cluster records what it was given).

TODO(merge, issue 14): re-point at ring-core's PresenceCluster (build_cluster with
open_shard) once it is on main: the applied spec then opens the new shard's store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from control.common.errors import BackendUnavailable
from control.common.kv.embedded import EmbeddedKV
from control.presence.follower import RingFollower, ring_reader
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import MoverProgress, RingStore

TWO = (ShardSpec("s0", "embedded:s0"), ShardSpec("s1", "embedded:s1"))
V1 = RingSpec(1, TWO)
V2 = RingSpec(2, (*TWO, ShardSpec("s2", "embedded:s2")), TWO, "migrating")


class FakeCluster:
    def __init__(self, spec: RingSpec) -> None:
        self.spec = spec
        self.given: list[RingSpec] = []
        self.fail = 0  # the next this many applies raise (a new shard unreachable)

    async def apply_ring(self, spec: RingSpec) -> bool:
        if self.fail:
            self.fail -= 1
            raise BackendUnavailable("shard s2 unreachable")
        newer = spec.version > self.spec.version
        settled = spec.version == self.spec.version and self.spec.migrating and not spec.migrating
        if not (newer or settled):
            return False
        self.spec = spec
        self.given.append(spec)
        return True


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


async def change(store: RingStore, spec: RingSpec) -> None:
    stored = await store.ring()
    assert stored is not None
    assert (await store.change(spec, stored.revision))[0]


async def until(check: object, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_run_once_applies_a_newer_ring_and_keeps_an_equal_one(kv: EmbeddedKV) -> None:
    store = RingStore(kv, "/t")
    await store.seed(V1)
    cluster = FakeCluster(V1)
    follower = RingFollower(store, cluster)
    assert "kept" in await follower.run_once()
    await change(store, V2)
    assert "applied" in await follower.run_once()
    assert cluster.given == [V2]
    assert await ring_reader(store)() == V2


async def test_the_follower_hands_every_change_to_the_cluster(kv: EmbeddedKV) -> None:
    store = RingStore(kv, "/t")
    await store.seed(V1)
    cluster = FakeCluster(V1)
    follower = RingFollower(store, cluster)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    try:
        await change(store, V2)
        await until(lambda: cluster.spec == V2)
        # Progress writes beside the ring key change nothing.
        await store.write_progress(MoverProgress(2, moved=5))
        stable = dataclasses.replace(V2, state="stable", previous=())
        await change(store, stable)
        await until(lambda: cluster.spec == stable)
        assert cluster.given == [V2, stable]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_an_apply_that_fails_is_tried_again(kv: EmbeddedKV) -> None:
    store = RingStore(kv, "/t")
    await store.seed(V1)
    cluster = FakeCluster(V1)
    cluster.fail = 1
    follower = RingFollower(store, cluster)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    try:
        await change(store, V2)
        await until(lambda: cluster.spec == V2)
        assert cluster.fail == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
