"""launch wires the ring into every process that routes users: a part that owns its
presence cluster seeds the ring from config at start (the store wins once it holds one),
follows it while running (supervised "ring-follower"), and the controller gets a mover.

The ring-aware cluster here is a test double over today's PresenceCluster.
TODO(merge, issue 14): with ring-core's PresenceCluster, drop RingAwareCluster and assert
on the real cluster's ``spec`` (and ``imctl up`` walking 2 -> 3 embedded shards)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import pytest
from aiohttp import web

from control import launch
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.launch import Part, access_part, controller_part, make_presence, scheduler_part
from control.launch.ring import ring_spec
from control.presence.cluster import PresenceCluster
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import MoverControl, RingStore
from control.presence.service import CONTROLLER
from control.settings import Settings
from control.testing import until
from tests.cluster import cluster_settings

PARTS: dict[str, Callable[[Settings], Part]] = {
    "scheduler": scheduler_part,
    "access": lambda s: access_part(s, "n0"),
    "controller": controller_part,
}


class Kept(EmbeddedKV):
    """A store that outlives the part (its close is the test's)."""

    async def close(self) -> None:
        pass


class Step(NamedTuple):
    cursor: str
    scanned: int
    moved: int


@pytest.fixture
async def kv() -> AsyncIterator[Kept]:
    store = Kept()
    yield store
    await EmbeddedKV.close(store)


async def started(part: Part) -> web.AppRunner:
    runner = web.AppRunner(part.app, handle_signals=False)
    await runner.setup()
    return runner


async def stopped(part: Part, runner: web.AppRunner) -> None:
    if part.node is not None:
        await part.node.stop(0)
    await runner.cleanup()


@pytest.mark.parametrize("name", sorted(PARTS))
async def test_every_part_seeds_the_ring_from_config(
    name: str, kv: Kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = cluster_settings(nodes=1)
    monkeypatch.setattr(launch, "make_kv", lambda cluster: kv)
    part = PARTS[name](settings)
    runner = await started(part)
    try:
        stored = await RingStore(kv, settings.cluster.prefix).ring()
        assert stored is not None and stored.record == ring_spec(settings)
        assert part.ring is not None and part.ring.alive() == {"ring-follower": True}
    finally:
        await stopped(part, runner)
    assert part.ring.alive() == {}  # closed with the part


def test_the_config_ring_names_embedded_shards_by_id() -> None:
    settings = cluster_settings(nodes=1)
    assert ring_spec(settings) == RingSpec(1, (ShardSpec("s0", "embedded:s0"),), vnodes=160)


async def test_a_ring_aware_cluster_routes_on_the_stored_ring_and_follows_it(
    kv: Kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = cluster_settings(nodes=1)
    store = RingStore(kv, settings.cluster.prefix)
    await kv.connect()
    # Another process seeded it first, and a resize is under way.
    migrating = RingSpec(
        2,
        (ShardSpec("s0", "embedded:s0"), ShardSpec("s1", "embedded:s1")),
        (ShardSpec("s0", "embedded:s0"),),
        "migrating",
    )
    await store.seed(ring_spec(settings))
    await store.change(migrating, (await store.ring()).revision)  # type: ignore[union-attr]
    await store.set_control(MoverControl(paused=True))  # the ring stays migrating meanwhile
    made: list[PresenceCluster] = []

    def presence(s: Settings, kv: KeyValueStore | None = None) -> PresenceCluster:
        made.append(make_presence(s, kv))
        return made[-1]

    monkeypatch.setattr(launch, "make_kv", lambda cluster: kv)
    monkeypatch.setattr(launch, "make_presence", presence)
    part = controller_part(settings)
    runner = await started(part)
    try:
        cluster = made[0]
        assert cluster.spec == migrating  # applied before the component started
        assert part.app[CONTROLLER].mover is not None
        assert part.app[CONTROLLER].supervisor.alive().get("ring-mover")
        stable = dataclasses.replace(migrating, state="stable", previous=())
        stored = await store.ring()
        assert stored is not None
        assert (await store.change(stable, stored.revision))[0]
        await until(lambda: cluster.spec == stable, 5.0, "the stable ring applied")
    finally:
        await stopped(part, runner)
