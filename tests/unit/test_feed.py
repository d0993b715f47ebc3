"""The scheduler's snapshot feed, one step at a time on an injected clock: changes coalesce
into one build, a failed build keeps the last snapshot and is counted, and a
self-preservation hold is looked at again when its grace ends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from control.common.config import HeartbeatSettings, RegistrySettings
from control.common.kv.embedded import EmbeddedKV
from control.common.registry import NodeRecord, PreservationPolicy
from control.gray.model import Release, Target
from control.gray.store import release_to_json
from control.scheduler.engine import Engine
from control.scheduler.feed import HOLD_MARGIN_S, SnapshotFeed
from control.scheduler.proximity import RegionMap
from control.scheduler.state import SchedulerMetrics

POLICY = PreservationPolicy(threshold=0.5, window_s=10, grace_s=30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def nodes(*ids: str) -> dict[str, NodeRecord]:
    return {i: NodeRecord(id=i, endpoint=f"ws://h/{i}", region="r") for i in ids}


def feed(clock: Clock, rebuild_s: float = 0.05) -> SnapshotFeed:
    engine = Engine(RegionMap(known=("r",)), policy=POLICY, clock=clock)
    return SnapshotFeed(
        engine,
        EmbeddedKV(),
        "/imctl",
        SchedulerMetrics(),
        rebuild_s=rebuild_s,
        verify_s=10,
        clock=clock,
    )


def failures(f: SnapshotFeed) -> float:
    return (
        f.metrics.registry.get_sample_value("imctl_scheduler_snapshot_build_failures_total") or 0.0
    )


def test_a_burst_of_changes_becomes_one_build_after_rebuild_s() -> None:
    clock = Clock()
    f = feed(clock)
    before = f.engine.builds
    f.nodes.on_change(nodes("a"))
    clock.now += 0.03
    f.nodes.on_change(nodes("a", "b"))  # within the window: no second build is scheduled
    assert f.due == pytest.approx(100.05)
    assert f.run_once() is None and f.engine.builds == before  # not due yet
    clock.now = 100.05
    assert f.run_once() is not None
    assert f.engine.builds == before + 1 and set(f.engine.snapshot.nodes) == {"a", "b"}
    assert f.due is None and f.run_once() is None  # nothing more until the next change


def test_with_rebuild_s_zero_a_change_builds_at_once() -> None:
    f = feed(Clock(), rebuild_s=0)
    f.gray.on_change({})
    f.nodes.on_change(nodes("a"))
    assert set(f.engine.snapshot.nodes) == {"a"} and f.due is None


def test_a_release_change_is_due_at_once_not_behind_the_node_window() -> None:
    clock = Clock()
    f = feed(clock)
    f.nodes.on_change(nodes("a"))  # a load report: its build waits out rebuild_s
    assert f.due == pytest.approx(100.05)
    clock.now += 0.01
    f.gray.on_change({"r1": Release(name="r1", target=Target(version="2.0"), percent=10)})
    assert f.due == pytest.approx(100.01)
    assert f.run_once() is not None  # built now, the pending node change folded in
    assert [r.name for r in f.engine.releases()] == ["r1"]
    assert set(f.engine.snapshot.nodes) == {"a"} and f.due is None
    f.stable.on_change({})  # the stable version is the same kind of decision
    assert f.due == pytest.approx(100.01)


async def test_run_serves_a_stored_release_change_without_waiting_for_rebuild_s() -> None:
    kv = EmbeddedKV()
    await kv.connect()
    engine = Engine(RegionMap(known=("r",)))
    # A window far longer than the wait below: only an urgent build can pass.
    f = SnapshotFeed(engine, kv, "/imctl", SchedulerMetrics(), rebuild_s=5, verify_s=10)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run(stop)) for run in (f.nodes.run, f.gray.run, f.stable.run, f.run)
    ]
    try:
        await asyncio.wait_for(f.synced.wait(), 5)
        release = Release(name="r1", target=Target(version="2.0"), percent=10)
        await kv.put("/imctl/nodes/a", nodes("a")["a"].to_json())  # opens the window
        await kv.put("/imctl/gray/r1", release_to_json(release))
        for _ in range(100):  # bounded: 1 s
            if f.served:
                break
            await asyncio.sleep(0.01)
        assert set(f.served) == {"r1"} and "a" in f.engine.snapshot.nodes
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        await kv.close()


def test_a_failed_build_keeps_the_last_snapshot_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    f = feed(clock, rebuild_s=0)
    f.nodes.on_change(nodes("a"))
    served = f.engine.snapshot

    def broken() -> str:
        raise RuntimeError("bad record")

    monkeypatch.setattr(f.engine, "rebuild", broken)
    f.nodes.on_change(nodes("a", "b"))
    assert f.engine.snapshot is served and failures(f) == 1
    monkeypatch.undo()
    f.nodes.on_change(nodes("a", "b"))  # the next change tries again
    assert set(f.engine.snapshot.nodes) == {"a", "b"} and failures(f) == 1


def test_a_hold_is_looked_at_again_when_its_grace_ends() -> None:
    clock = Clock()
    f = feed(clock, rebuild_s=0)
    f.nodes.on_change(nodes("a", "b", "c", "d"))
    f.nodes.on_change({})  # every node vanished at once: the last view is held
    assert f.engine.snapshot.held and set(f.engine.snapshot.nodes) == {"a", "b", "c", "d"}
    # A quiet registry sends no change to end the hold: the feed has a build due itself.
    assert f.due == pytest.approx(100 + POLICY.grace_s + HOLD_MARGIN_S)
    clock.now += POLICY.grace_s - 1
    assert f.run_once() is None and f.engine.snapshot.held
    clock.now += 1 + HOLD_MARGIN_S
    assert f.run_once() is not None
    assert not f.engine.snapshot.held and f.engine.snapshot.nodes == {}
    assert f.due is None


def test_a_change_during_a_hold_still_builds_after_rebuild_s() -> None:
    clock = Clock()
    f = feed(clock, rebuild_s=0.05)
    f.nodes.on_change(nodes("a", "b", "c", "d"))
    clock.now += 0.05
    f.run_once()
    f.nodes.on_change({})
    clock.now += 0.05
    f.run_once()
    assert f.engine.snapshot.held  # the hold's own look is 30 s away
    f.nodes.on_change(nodes("a", "b", "c", "d", "e"))
    assert f.due == pytest.approx(clock.now + 0.05)
    clock.now += 0.05
    f.run_once()
    assert "e" in f.engine.snapshot.nodes and not f.engine.snapshot.held


async def test_run_builds_once_both_mirrors_listed_then_follows_changes() -> None:
    kv = EmbeddedKV()
    await kv.connect()
    record = NodeRecord(id="live", endpoint="ws://h/live", region="r")
    await kv.put("/imctl/nodes/live", record.to_json())
    engine = Engine(RegionMap(known=("r",)))
    f = SnapshotFeed(engine, kv, "/imctl", SchedulerMetrics(), rebuild_s=0.01, verify_s=10)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run(stop)) for run in (f.nodes.run, f.gray.run, f.stable.run, f.run)
    ]
    try:
        await asyncio.wait_for(f.synced.wait(), 5)
        assert "live" in f.engine.snapshot.nodes
        assert f.metrics.registry.get_sample_value("imctl_scheduler_ready") == 1
        builds = f.engine.builds
        more = NodeRecord(id="more", endpoint="ws://h/more", region="r")
        await kv.put("/imctl/nodes/more", more.to_json())
        for _ in range(200):  # bounded: 2 s
            if "more" in f.engine.snapshot.nodes:
                break
            await asyncio.sleep(0.01)
        assert set(f.engine.snapshot.nodes) == {"live", "more"}
        assert f.engine.builds == builds + 1
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        await kv.close()


def test_derived_timings_are_properties_of_their_base_values() -> None:
    assert HeartbeatSettings(interval_s=30).sweep_s == 5.0  # capped
    assert HeartbeatSettings(interval_s=4).sweep_s == 2.0  # half an interval
    reg = RegistrySettings(lease_ttl_s=7)
    assert reg.pending_window_s == 7.0 and reg.reconcile_s == 7.0


def test_the_scheduler_and_admin_never_import_the_aggregate_settings_or_launch() -> None:
    code = (
        "import sys, json, control.scheduler.service, control.admin.routes;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['control','settings'], ['control','launch'], ['control','access'], ['control','cli']))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
