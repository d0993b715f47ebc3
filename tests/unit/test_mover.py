"""The ring mover against the real status cluster on embedded shards (recording what it
is asked) and the real RingStore on the embedded key-value store: fencing first, throttle,
pause, progress, a clean pass marks the ring stable, a new leader resumes from the cursors,
a lost race."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from control.common.kv.embedded import EmbeddedKV
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence
from control.presence.mover import DONE, Mover
from control.presence.moving import MoveStep
from control.presence.ring import Ring, RingSpec, ShardSpec
from control.presence.ringstore import MoverControl, RingStore
from control.presence.shards import open_shard_for

PREFIX = "/t"
TWO = (ShardSpec("s0", "embedded:s0"), ShardSpec("s1", "embedded:s1"))
THREE = (*TWO, ShardSpec("s2", "embedded:s2"))


class Clock:
    """Time that passes only when someone sleeps or works."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


class Recorded(PresenceCluster):
    """The real status cluster on embedded shards, recording what the mover asked of it
    (ring applied, fencing, batches and the cursors they started from)."""

    def __init__(self, spec: RingSpec, clock: Clock) -> None:
        # Users written here never expire under the test's clock.
        super().__init__(spec, {}, 1e6, clock, open_shard=open_shard_for("embedded", 1e6, ""))
        self.calls: list[str] = []
        self.cursors_asked: list[tuple[str, str]] = []

    async def apply_ring(self, spec: RingSpec) -> bool:
        applied = await super().apply_ring(spec)
        if applied:
            self.calls.append(f"apply {spec.version}")
        return applied

    async def fence_all(self) -> None:
        self.calls.append(f"fence {self.spec.version}")
        await super().fence_all()

    async def move_step(self, shard_id: str, cursor: str, limit: int) -> MoveStep:
        self.calls.append(f"move {shard_id}")
        self.cursors_asked.append((shard_id, cursor))
        return await super().move_step(shard_id, cursor, limit)

    async def placement(self) -> dict[str, set[str]]:
        """Which users each shard holds (read with its own scan)."""
        out: dict[str, set[str]] = {}
        for sid, store in self.shards.items():
            _, found = await store.scan("0", 1_000_000)
            out[sid] = {p.uid for p, _ in found}
        return out

    async def misplaced(self) -> list[str]:
        ring = Ring(self.spec)
        placed = await self.placement()
        return [u for sid, us in placed.items() for u in us if ring.owner(u) != sid]


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


async def resized(kv: EmbeddedKV, users: int = 600) -> tuple[RingStore, Recorded, Clock]:
    """Users online on a 2-shard ring; the store's ring then migrating to 3 shards."""
    store, clock = RingStore(kv, PREFIX), Clock()
    old = RingSpec(1, TWO, vnodes=40)
    await store.seed(old)
    cluster = Recorded(old, clock)
    for i in range(users):
        await cluster.online(Presence(f"u{i:05}", "d", "n1", f"c{i}"))
    stored = await store.ring()
    assert stored is not None
    new = RingSpec(2, THREE, TWO, "migrating", 40)
    assert (await store.change(new, stored.revision))[0]
    return store, cluster, clock


async def until_stable(mover: Mover, steps: int = 500) -> list[str]:
    said = []
    for _ in range(steps):
        said.append(await mover.run_once())
        if "is stable" in said[-1]:
            return said
    raise AssertionError(f"not stable after {steps} steps: {said[-3:]}")


async def test_a_resize_fences_first_moves_the_changed_users_and_ends_stable(
    kv: EmbeddedKV,
) -> None:
    store, cluster, clock = await resized(kv)
    before = {u: sid for sid, us in (await cluster.placement()).items() for u in us}
    mover = Mover(cluster, store, "c1", clock, clock.sleep, batch=50)
    said = await until_stable(mover)
    assert cluster.calls[:2] == ["apply 2", "fence 2"]  # fenced before any user moved
    assert cluster.calls.count("fence 2") == 1
    assert await cluster.misplaced() == []
    after = await cluster.placement()
    assert sum(len(u) for u in after.values()) == len(before)  # nobody lost
    moved = sum(1 for sid, us in after.items() for u in us if before[u] != sid)
    assert moved > 0
    stored = await store.ring()
    assert stored is not None and stored.record is not None
    assert stored.record == RingSpec(2, THREE, (), "stable", 40)
    progress = await store.read_progress()
    assert progress is not None
    assert (progress.version, progress.moved, progress.state) == (2, moved, "stable")
    assert progress.passes == 2 and not progress.cursors and progress.by == "c1"
    assert mover.moved_total == moved
    assert "another pass" in " ".join(said)
    # Nothing more to do, and no second fencing for a stable ring.
    assert "nothing to move" in await mover.run_once()
    assert cluster.calls.count("fence 2") == 1


async def test_progress_figures_moved_expected_rate_and_eta(kv: EmbeddedKV) -> None:
    store, cluster, clock = await resized(kv, users=2000)
    total = 2000
    # 100 users a second: the rate and ETA are measurable under the fake clock.
    await store.set_control(MoverControl(throttle_per_s=100.0))
    mover = Mover(cluster, store, "c1", clock, clock.sleep, batch=1000)
    await mover.run_once()
    assert (await store.read_progress()) is not None  # written when it began
    first = mover.progress
    assert first is not None
    assert first.expected == round(total * cluster.moved_fraction())
    assert first.state == "moving" and first.moved > 0
    for _ in range(8):
        said = await mover.run_once()
    progress = await store.read_progress()
    assert progress is not None
    assert 0 < progress.moved < first.expected + 50
    assert 50 <= progress.rate_per_s <= 110  # the throttle's 100/s, measured
    assert progress.eta_s == pytest.approx(progress.remaining / progress.rate_per_s)
    assert "remaining" in said and "ETA" in said
    assert clock.now - progress.updated_at <= 1.0 + 1e-9  # written at least every second


async def test_the_throttle_is_honoured_and_can_change_while_running(kv: EmbeddedKV) -> None:
    store, cluster, clock = await resized(kv, users=3000)
    await store.set_control(MoverControl(throttle_per_s=200.0))
    mover = Mover(cluster, store, "c1", clock, clock.sleep, batch=1000)
    start = clock.now
    for _ in range(10):
        await mover.run_once()
    elapsed = clock.now - start
    # A token bucket of one second: at most a second's worth ahead of the rate.
    assert mover.moved_total <= 200 * (elapsed + 1)
    assert mover.moved_total >= 200  # it did move
    await store.set_control(MoverControl(throttle_per_s=20.0))
    moved_before, start = mover.moved_total, clock.now
    for _ in range(5):
        await mover.run_once()
    assert 0 < mover.moved_total - moved_before <= 20 * (clock.now - start + 1) + 20
    assert clock.slept > 0


async def test_pause_stops_the_moves_and_resume_goes_on(kv: EmbeddedKV) -> None:
    store, cluster, clock = await resized(kv)
    mover = Mover(cluster, store, "c1", clock, clock.sleep, batch=50)
    await mover.run_once()
    await store.set_control(MoverControl(paused=True))
    moves = cluster.calls.count("move s0") + cluster.calls.count("move s1")
    for _ in range(5):
        said = await mover.run_once()
        assert said.startswith("paused") and not mover.moving
    assert cluster.calls.count("move s0") + cluster.calls.count("move s1") == moves
    progress = await store.read_progress()
    assert progress is not None and progress.state == "paused"
    await store.set_control(MoverControl(paused=False))
    await until_stable(mover)
    assert await cluster.misplaced() == []


async def test_a_new_leader_resumes_from_the_stored_cursors(kv: EmbeddedKV) -> None:
    store, cluster, clock = await resized(kv, users=1200)
    first = Mover(cluster, store, "c1", clock, clock.sleep, batch=40)
    for _ in range(12):
        await first.run_once()
        clock.now += 0.2  # progress is written every second of this
    stored = await store.read_progress()
    assert stored is not None and stored.cursors and stored.moved > 0
    shard, cursor = next((s, c) for s, c in sorted(stored.cursors.items()) if c != DONE)
    # The old leader is gone (kill -9: it wrote nothing more). A new one takes over.
    cluster.cursors_asked.clear()
    second = Mover(cluster, store, "c2", clock, clock.sleep, batch=40)
    await second.run_once()
    assert cluster.cursors_asked[0] == (shard, cursor)  # not from the start
    progress = await store.read_progress()
    assert progress is not None and progress.by == "c2"
    assert progress.moved >= stored.moved  # the count goes on
    await until_stable(second)
    assert await cluster.misplaced() == []
    final = await store.read_progress()
    assert final is not None and final.state == "stable"
    assert final.moved == stored.moved + second.moved_total


async def test_a_lost_race_for_the_stable_mark_leaves_the_other_writer_alone(
    kv: EmbeddedKV,
) -> None:
    store, cluster, clock = await resized(kv, users=200)
    mover = Mover(cluster, store, "c1", clock, clock.sleep, batch=1000)
    newer = RingSpec(3, (*THREE, ShardSpec("s3", "embedded:s3")), THREE, "migrating", 40)
    change = store.change
    raced_once: list[int] = []

    async def raced(spec: RingSpec, expected: int) -> tuple[bool, int]:
        # An operator's change lands between the mover's read and its compare-and-swap.
        if spec.state == "stable" and not raced_once:
            raced_once.append(1)
            stored = await store.ring()
            assert stored is not None
            assert (await change(newer, stored.revision))[0]
        return await change(spec, expected)

    store.change = raced  # type: ignore[method-assign]
    said = [await mover.run_once() for _ in range(12)]
    assert any("changed under the mover" in s for s in said)
    stored = await store.ring()
    assert stored is not None and stored.record == newer  # not overwritten
    store.change = change  # type: ignore[method-assign]
    await until_stable(mover)
    assert cluster.spec.version == 3 and await cluster.misplaced() == []
    assert cluster.calls.count("fence 3") == 1


async def test_a_stable_ring_is_left_alone(kv: EmbeddedKV) -> None:
    store, clock = RingStore(kv, PREFIX), Clock()
    await store.seed(RingSpec(1, TWO))
    cluster = Recorded(RingSpec(1, TWO), clock)
    mover = Mover(cluster, store, "c1", clock, clock.sleep)
    assert "stable: nothing to move" in await mover.run_once()
    assert cluster.calls == [] and not mover.moving
    assert await store.read_progress() is None
