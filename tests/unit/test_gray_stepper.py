"""The step controller (control/gray/stepper.py) over the embedded ReleaseStore with an
injected clock and a fake figures source: advance on schedule after a pass, rollback on a
canary disconnect rate, pause as inconclusive with no traffic and when Prometheus is down;
every decision in the history with its figures."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from control.common.kv.embedded import EmbeddedKV
from control.common.registry import NodeRecord, Registry
from control.gray.analysis import PoolFigures
from control.gray.figures import FiguresMissing, PrometheusSource
from control.gray.model import Release, Target
from control.gray.stepper import Stepper
from control.gray.store import ReleaseStore

PREFIX = "/t"
HEALTHY = PoolFigures(
    nodes=2, connections=200, handshakes=200, closes=100, abnormal_closes=2, frames=1000
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeFigures:
    def __init__(self, canary: PoolFigures, stable: PoolFigures = HEALTHY) -> None:
        self.canary, self.stable = canary, stable
        self.samples = 0
        self.reads: list[tuple[Target, float]] = []

    async def sample(self) -> None:
        self.samples += 1

    async def read(self, target: Target, window_s: float) -> tuple[PoolFigures, PoolFigures]:
        self.reads.append((target, window_s))
        return self.canary, self.stable


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


def release(percent: float = 5.0, **kw: object) -> Release:
    base = dict(
        name="r1",
        target=Target(pool="canary"),
        percent=percent,
        steps=(1.0, 5.0, 25.0, 50.0, 100.0),
        step_interval_s=60.0,
        analysis={"window_s": 120},
    )
    base.update(kw)
    return Release(**base)  # type: ignore[arg-type]


async def setup(
    kv: EmbeddedKV, figures: object, rel: Release
) -> tuple[ReleaseStore, Stepper, Clock]:
    clock = Clock()
    store = ReleaseStore(kv, PREFIX, clock=clock)
    await store.create(rel, by="alice")
    return store, Stepper(store, figures, clock), clock  # type: ignore[arg-type]


async def test_advances_on_schedule_after_a_pass(kv: EmbeddedKV) -> None:
    figures = FakeFigures(HEALTHY)
    store, stepper, clock = await setup(kv, figures, release(5.0))
    clock.now += 59
    assert await stepper.run_once() == []  # not due yet: nothing judged, nothing written
    assert figures.reads == []
    clock.now += 1
    said = await stepper.run_once()
    assert said and "step" in said[0]
    stored = await store.get("r1")
    assert stored is not None and stored.release.percent == 25.0
    assert stored.release.state == "running"
    assert figures.reads == [(Target(pool="canary"), 120.0)]
    # The next step is an interval after this change, not after the first.
    clock.now += 30
    assert await stepper.run_once() == []
    clock.now += 30
    await stepper.run_once()
    stored = await store.get("r1")
    assert stored is not None and stored.release.percent == 50.0
    last = (await store.history("r1"))[-1]
    assert last.action == "advance" and last.by == "gray-stepper"
    assert last.changes["percent"] == (25.0, 50.0)
    assert last.figures["verdict"] == "pass"
    assert last.figures["canary"]["connections"] == 200
    assert last.figures["stable"]["abnormal_closes"] == 2


async def test_injected_canary_disconnect_rate_rolls_back(kv: EmbeddedKV) -> None:
    sick = PoolFigures(
        nodes=1, connections=200, handshakes=200, closes=100, abnormal_closes=90, frames=1000
    )
    store, stepper, clock = await setup(kv, FakeFigures(sick), release(5.0))
    clock.now += 60
    await stepper.run_once()
    stored = await store.get("r1")
    assert stored is not None
    assert (stored.release.state, stored.release.percent) == ("rolled_back", 0.0)
    last = (await store.history("r1"))[-1]
    assert last.action == "analysis"
    assert last.figures["verdict"] == "breach"
    assert last.figures["canary"]["abnormal_closes"] == 90
    assert last.figures["ratios"]["abnormal_close_rate"] == 30.0
    assert "over_s" in last.figures
    assert "abnormal_close_rate" in last.why


async def test_no_canary_traffic_pauses_as_inconclusive(kv: EmbeddedKV) -> None:
    store, stepper, clock = await setup(kv, FakeFigures(PoolFigures(nodes=1)), release(5.0))
    clock.now += 60
    await stepper.run_once()
    stored = await store.get("r1")
    assert stored is not None
    assert (stored.release.state, stored.release.percent) == ("paused", 5.0)
    last = (await store.history("r1"))[-1]
    assert last.action == "analysis" and last.figures["verdict"] == "inconclusive"
    assert "inconclusive" in last.why and "canary pool" in last.why
    # Paused: the stepper leaves it alone from now on.
    clock.now += 600
    assert await stepper.run_once() == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_prometheus_down_pauses_never_rolls_back_or_advances(kv: EmbeddedKV) -> None:
    registry = Registry(kv, PREFIX)
    for node_id, pool in (("c1", "canary"), ("s1", "default")):
        await registry.register(
            NodeRecord(id=node_id, endpoint="ws://127.0.0.1:1/ws", region="r", pool=pool), 30
        )
    down = PrometheusSource(registry, f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(FiguresMissing, match="unreachable"):
        await down.read(Target(pool="canary"), 60)
    store, stepper, clock = await setup(kv, down, release(5.0))
    clock.now += 60
    await stepper.run_once()
    stored = await store.get("r1")
    assert stored is not None
    assert (stored.release.state, stored.release.percent) == ("paused", 5.0)
    last = (await store.history("r1"))[-1]
    assert last.figures["verdict"] == "inconclusive"
    assert "prometheus" in last.figures["missing"]


async def test_first_step_from_zero_takes_no_analysis(kv: EmbeddedKV) -> None:
    figures = FakeFigures(PoolFigures())
    store, stepper, clock = await setup(kv, figures, release(0.0))
    clock.now += 60
    await stepper.run_once()
    stored = await store.get("r1")
    assert stored is not None and stored.release.percent == 1.0
    assert figures.reads == []
    assert (await store.history("r1"))[-1].action == "advance"


async def test_last_step_passing_waits_for_a_human_and_bad_settings_pause(kv: EmbeddedKV) -> None:
    figures = FakeFigures(HEALTHY)
    store, stepper, clock = await setup(kv, figures, release(100.0))
    clock.now += 60
    said = await stepper.run_once()
    assert "promote" in said[0]
    stored = await store.get("r1")
    assert stored is not None and stored.release.state == "running"
    assert await stepper.run_once() == []  # judged again only an interval later
    assert len(figures.reads) == 1
    bad = release(5.0, name="r2", analysis={"max_ratio": {"latency": 3}})
    await store.create(bad, by="alice")
    clock.now += 60
    await stepper.run_once()
    r2 = await store.get("r2")
    assert r2 is not None and r2.release.state == "paused"
    assert "unknown metric" in (await store.history("r2"))[-1].why


async def test_a_follower_does_nothing(kv: EmbeddedKV) -> None:
    clock = Clock()
    store = ReleaseStore(kv, PREFIX, clock=clock)
    await store.create(release(5.0), by="alice")
    stepper = Stepper(store, FakeFigures(HEALTHY), clock, leader=lambda: False)
    clock.now += 600
    assert await stepper.run_once() == ["not the leader: not stepping"]
    assert len(await store.history("r1")) == 1


async def test_release_state_percent_and_verdicts_are_metrics(kv: EmbeddedKV) -> None:
    from prometheus_client import CollectorRegistry

    from control.gray.metrics import GrayMetrics

    sick = PoolFigures(
        nodes=1, connections=200, handshakes=200, closes=100, abnormal_closes=90, frames=1000
    )
    store, stepper, clock = await setup(kv, FakeFigures(sick), release(5.0))
    registry = CollectorRegistry()
    stepper.metrics = GrayMetrics(registry)
    value = registry.get_sample_value
    await stepper.run_once()  # not due yet: shown, not judged
    assert value("imctl_gray_release_percent", {"release": "r1"}) == 5.0
    assert value("imctl_gray_release_state", {"release": "r1", "state": "running"}) == 1.0
    # from 0 before any verdict, so that an alert's increase() sees the first breach
    assert value("imctl_gray_analysis_total", {"release": "r1", "verdict": "breach"}) == 0.0
    clock.now += 60
    await stepper.run_once()  # judged: a breach, rolled back
    assert value("imctl_gray_analysis_total", {"release": "r1", "verdict": "breach"}) == 1.0
    ratio = {"release": "r1", "metric": "abnormal_close_rate"}
    assert value("imctl_gray_analysis_ratio", ratio) == 30.0
    await stepper.run_once()  # the next tick shows the rollback
    assert value("imctl_gray_release_state", {"release": "r1", "state": "rolled_back"}) == 1.0
    assert value("imctl_gray_release_percent", {"release": "r1"}) == 0.0
    stored = await store.get("r1")
    assert stored is not None
    await store.delete("r1", stored.revision, by="t")
    await stepper.run_once()  # a deleted release leaves the metrics
    assert value("imctl_gray_release_percent", {"release": "r1"}) is None


async def test_a_promote_that_stopped_before_the_hand_over_is_finished(kv: EmbeddedKV) -> None:
    """The promote's writer died between its two writes: the leader's next tick makes the
    promoted target the stable version (once), and the history says so."""
    store, stepper, _ = await setup(kv, FakeFigures(HEALTHY), release(50.0, steps=()))
    stored = await store.get("r1")
    assert stored is not None
    done = release(100.0, steps=(), state="promoted")
    await store.change("r1", stored.revision, done, action="promote", by="alice")
    assert await store.stable.get() is None
    said = await stepper.run_once()
    assert said == ["r1: stable version handed over to Target(pool='canary', version='')"]
    stable = await store.stable.get()
    assert stable is not None and stable.stable.target == Target(pool="canary")
    assert await stepper.run_once() == []  # done once
    assert [r.action for r in await store.history("r1")] == ["create", "promote", "stable"]
