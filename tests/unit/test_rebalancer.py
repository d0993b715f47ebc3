"""The controller's rebalancer (control/launch/rebalance.py) over the embedded store with an
injected clock: the automatic mode's hysteresis (pure ``auto_decide``), and ``run_once``
starting, planning rounds that never overlap, waiting for a drain or a release, and
finishing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from control.access.config import AutoRebalanceSettings
from control.common.errors import ConfigError
from control.common.kv.embedded import EmbeddedKV
from control.common.rebalance import (
    NAME,
    RebalanceRequest,
    rebalance_plans,
    rebalance_requests,
)
from control.common.registry import NodeRecord, Registry
from control.gray.model import Release, Target
from control.gray.store import ReleaseStore
from control.launch.rebalance import AUTO_BY, Look, Rebalancer, Timing, auto_decide
from control.settings import parse_settings

PREFIX = "/t"
AUTO = AutoRebalanceSettings(
    enabled=True, trigger_ratio=1.5, until_ratio=1.1, max_rate=50, check_s=1
)
TIMING = Timing(settle_s=2.0, moving_s=10.0, tick_s=0.5)


def test_a_region_must_stay_hot_before_a_start() -> None:
    hot: dict[str, float] = {}
    hot, start = auto_decide(AUTO, hot, Look(0.0, {"north": 2.0, "south": 1.0}, ""))
    assert hot == {"north": 0.0} and not start
    hot, start = auto_decide(AUTO, hot, Look(2.9, {"north": 2.0}, ""))
    assert not start  # under hot_for_s (3 looks of 1 s)
    hot, start = auto_decide(AUTO, hot, Look(3.0, {"north": 2.0}, ""))
    assert start


def test_a_dip_below_the_trigger_or_a_drain_starts_the_clock_again() -> None:
    hot, _ = auto_decide(AUTO, {}, Look(0.0, {"north": 2.0}, ""))
    hot, _ = auto_decide(AUTO, hot, Look(2.0, {"north": 1.4}, ""))  # dipped: no flapping
    hot, start = auto_decide(AUTO, hot, Look(3.0, {"north": 2.0}, ""))
    assert hot == {"north": 3.0} and not start
    hot, start = auto_decide(AUTO, hot, Look(7.0, {"north": 2.0}, "node n1 is draining"))
    assert hot == {} and not start
    off = AutoRebalanceSettings(enabled=False)
    assert auto_decide(off, {"north": 0.0}, Look(99.0, {"north": 9.0}, "")) == ({}, False)


def test_the_trigger_must_be_above_the_target() -> None:
    with pytest.raises(ConfigError, match="trigger_ratio: must be above until_ratio"):
        parse_settings(
            {"access": {"rebalance": {"auto": {"trigger_ratio": 1.1, "until_ratio": 1.2}}}}, "t"
        )


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


async def publish(kv: EmbeddedKV, conns: list[int], state: str = "up") -> None:
    registry = Registry(kv, PREFIX)
    for i, c in enumerate(conns):
        record = NodeRecord(f"n{i}", f"ws://n{i}", "north", conns=c, state="up")
        if i == 0 and state != "up":
            record = NodeRecord(f"n{i}", f"ws://n{i}", "north", conns=c, state="draining")
        await registry.records.put(record)


async def test_auto_starts_plans_rounds_in_turn_and_finishes(kv: EmbeddedKV) -> None:
    clock = Clock()
    rebalancer = Rebalancer(kv, PREFIX, AUTO, TIMING, clock)
    plans, requests = rebalance_plans(kv, PREFIX), rebalance_requests(kv, PREFIX)
    await publish(kv, [400, 400, 400, 0, 0])
    assert await rebalancer.run_once() == "idle"  # hot, but not for long yet
    clock.now += AUTO.hot_for_s
    assert await rebalancer.run_once() == "round 1 planned"
    stored = await requests.get(NAME)
    assert stored is not None and stored.record is not None and stored.record.by == AUTO_BY
    first = (await plans.get(NAME)).record  # type: ignore[union-attr]
    assert first is not None and set(first.slices) == {"n0", "n1", "n2"}
    assert sum(s.rate for s in first.slices.values()) <= AUTO.max_rate
    assert first.start >= clock.now
    # While the round is shed and its clients settle, nothing new is planned.
    clock.now = first.end + TIMING.settle_s - 0.1
    assert await rebalancer.run_once() == "round 1 under way"
    # The clients landed unevenly: a second round, after the first one's window.
    await publish(kv, [300, 250, 240, 200, 210])
    clock.now = first.end + TIMING.settle_s
    assert await rebalancer.run_once() == "round 2 planned"
    second = (await plans.get(NAME)).record  # type: ignore[union-attr]
    assert second is not None and second.start >= first.end and set(second.slices) == {"n0"}
    await publish(kv, [245, 240, 240, 235, 240])
    clock.now = second.end + TIMING.settle_s
    assert await rebalancer.run_once() == "done"
    assert await requests.get(NAME) is None and await plans.get(NAME) is None
    # Unbalanced again at once: the automatic mode rests before it looks again.
    await publish(kv, [600, 240, 240, 0, 0])
    clock.now += AUTO.hot_for_s
    assert await rebalancer.run_once() == "idle"


async def test_a_drain_or_a_moving_release_holds_every_round(kv: EmbeddedKV) -> None:
    clock = Clock()
    rebalancer = Rebalancer(kv, PREFIX, AUTO, TIMING, clock)
    await publish(kv, [400, 400, 400, 0, 0], state="draining")
    for _ in range(5):  # never starts while n0 drains, however long it stays hot
        assert await rebalancer.run_once() == "idle"
        clock.now += AUTO.check_s
    # A human's request waits as well.
    requests = rebalance_requests(kv, PREFIX)
    await requests.put(RebalanceRequest(30, 1.1, clock.now, "ops"))
    assert await rebalancer.run_once() == "waiting: node n0 is draining"
    await publish(kv, [400, 400, 400, 0, 0])
    store = ReleaseStore(kv, PREFIX, clock=clock)
    await store.create(Release(name="r1", target=Target(pool="canary"), percent=5), by="ops")
    assert await rebalancer.run_once() == "waiting: a release changed: its clients may be moving"
    clock.now += TIMING.moving_s
    assert await rebalancer.run_once() == "round 1 planned"


async def test_a_follower_does_nothing(kv: EmbeddedKV) -> None:
    rebalancer = Rebalancer(kv, PREFIX, AUTO, TIMING, Clock(), leader=lambda: False)
    await rebalance_requests(kv, PREFIX).put(RebalanceRequest(30, 1.1, 1.0, "ops"))
    await publish(kv, [400, 0])
    assert await rebalancer.run_once() == "not the leader"
    assert await rebalance_plans(kv, PREFIX).get(NAME) is None
