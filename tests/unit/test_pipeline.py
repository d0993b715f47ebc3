from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from control.common.registry import NodeRecord
from control.gray.model import Release, Target, UserContext, Version
from control.scheduler.pipeline import decide, explain_decision, has_room, p2c, place
from control.scheduler.proximity import RegionMap
from control.scheduler.snapshot import STABLE, Pending, Snapshot


def node(nid: str, region: str = "r1", zone: str = "a", **kw: object) -> NodeRecord:
    return NodeRecord(id=nid, endpoint=f"ws://h/{nid}", region=region, zone=zone, **kw)  # type: ignore[arg-type]


def user(uid: str = "u1", region: str | None = "r1") -> UserContext:
    return UserContext(uid, "ios", Version.parse("1.0"), region)


class NoPending:
    def get(self, node_id: str, default: int = 0) -> int:
        return default


node_lists = st.lists(
    st.builds(
        lambda i, conns, cap, state, weight: node(
            f"n{i}", conns=min(conns, cap), capacity=cap, state=state, weight=weight
        ),
        st.integers(0, 10_000),
        st.integers(0, 120),
        st.integers(1, 100),
        st.sampled_from(["up", "draining"]),
        st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    ),
    min_size=0,
    max_size=30,
    unique_by=lambda n: n.id,
)


@settings(max_examples=300)
@given(nodes=node_lists, seed=st.integers(0, 2**32))
def test_p2c_never_picks_full_or_draining(nodes: list[NodeRecord], seed: int) -> None:
    picked = p2c(nodes, NoPending(), random.Random(seed))
    if picked is None:
        assert not any(has_room(n, NoPending()) for n in nodes)
    else:
        assert picked.state == "up" and picked.conns < picked.capacity and picked.weight > 0


def test_p2c_counts_pending() -> None:
    pending = Pending(window_s=60)
    full = node("full", capacity=10, conns=5)
    for _ in range(5):
        pending.add("full")
    free = node("free", capacity=10, conns=9)
    for seed in range(50):
        assert p2c([full, free], pending, random.Random(seed)) is free


def test_p2c_prefers_less_loaded() -> None:
    nodes = [node("busy", conns=90, capacity=100), node("idle", conns=10, capacity=100)]
    picks = Counter(p2c(nodes, NoPending(), random.Random(s)).id for s in range(400))  # type: ignore[union-attr]
    assert picks["idle"] > picks["busy"] * 2


def test_weights_shift_load() -> None:
    nodes = [
        node("heavy", conns=50, capacity=100, weight=2.0),
        node("light", conns=40, capacity=100),
    ]
    picks = Counter(p2c(nodes, NoPending(), random.Random(s)).id for s in range(400))  # type: ignore[union-attr]
    assert picks["heavy"] > picks["light"]  # 50/(100*2) < 40/100


def test_proximity_falls_back_in_matrix_order() -> None:
    rm = RegionMap(known=("a", "b", "c", "d"), preference={"a": ("a", "c", "b")})
    assert rm.ranking("a") == ("a", "c", "b", "d")
    full = dict(conns=10, capacity=10)
    nodes = {
        "a1": node("a1", "a", **full),
        "b1": node("b1", "b"),
        "c1": node("c1", "c", **full),
        "d1": node("d1", "d"),
    }
    snap = Snapshot.build(nodes)
    got = place(snap.tracks[STABLE], rm.ranking("a"), "a", NoPending(), random.Random(1))
    assert got is not None and got[0].id == "b1" and got[2] == "nearby"
    nodes["b1"] = node("b1", "b", **full)
    got = place(
        Snapshot.build(nodes).tracks[STABLE], rm.ranking("a"), "a", NoPending(), random.Random(1)
    )
    assert got is not None and got[0].id == "d1"


def test_local_region_first() -> None:
    rm = RegionMap(known=("a", "b"))
    snap = Snapshot.build({"a1": node("a1", "a", conns=50), "b1": node("b1", "b")})
    d = decide(snap, user(region="a"), rm.ranking("a"), NoPending(), random.Random(0), 1)
    assert d is not None and d.node.id == "a1" and d.placement == "local"
    assert [n.id for n in d.fallbacks] == ["b1"]


def test_stable_users_never_land_on_canary_nodes() -> None:
    canary = Release(name="c", target=Target(pool="canary"), percent=0)
    nodes = {"s1": node("s1", conns=99, capacity=100), "c1": node("c1", pool="canary")}
    snap = Snapshot.build(nodes, [canary])
    rm = RegionMap(known=("r1",))
    for i in range(300):
        d = decide(snap, user(f"u{i}"), rm.ranking("r1"), NoPending(), random.Random(i), 2)
        assert d is not None and d.node.id == "s1" and d.track == STABLE
        assert all(f.id != "c1" for f in d.fallbacks)


def test_gray_users_go_to_target_and_fall_back_when_full() -> None:
    canary = Release(name="c", target=Target(version="2.0"), percent=100)
    nodes = {"s1": node("s1"), "c1": node("c1", version="2.0")}
    rm = RegionMap(known=("r1",))
    d = decide(
        Snapshot.build(nodes, [canary]), user(), rm.ranking("r1"), NoPending(), random.Random(0), 2
    )
    assert d is not None and (d.node.id, d.track, d.strategy) == ("c1", "c", "gray")
    nodes["c1"] = node("c1", version="2.0", conns=10, capacity=10)
    d = decide(
        Snapshot.build(nodes, [canary]), user(), rm.ranking("r1"), NoPending(), random.Random(0), 2
    )
    assert d is not None and (d.node.id, d.track, d.strategy) == ("s1", STABLE, "gray_fallback")


def test_rolled_back_canary_takes_nobody() -> None:
    gone = Release(name="c", target=Target(pool="canary"), percent=100, state="rolled_back")
    snap = Snapshot.build({"c1": node("c1", pool="canary")}, [gone])
    d = decide(snap, user(), ("r1",), NoPending(), random.Random(0), 1)
    assert d is None


def test_a_promoted_target_is_the_stable_track_and_the_old_fleet_takes_nobody() -> None:
    done = Release(name="c", target=Target(version="2.0"), percent=100, state="promoted")
    nodes = {"old": node("old", version="1.0"), "new": node("new", version="2.0")}
    nodes["new2"] = node("new2", version="2.0", zone="b")
    snap = Snapshot.build(nodes, [done], stable=Target(version="2.0"))
    rm = RegionMap(known=("r1",))
    for i in range(200):  # users the release never took (it routes nobody now)
        d = decide(snap, user(f"u{i}"), rm.ranking("r1"), NoPending(), random.Random(i), 2)
        assert d is not None and d.node.id != "old" and d.track == STABLE
        assert all(f.id != "old" for f in d.fallbacks)
    # A next canary on the old version is fenced as any canary; the stable track stays.
    nxt = Release(name="n", target=Target(version="1.0"), percent=0)
    snap = Snapshot.build(nodes, [done, nxt], stable=Target(version="2.0"))
    assert {n.id for n in snap.tracks[STABLE]["r1"].nodes} == {"new", "new2"}
    # The stable target with no usable node: the other nodes serve rather than nobody.
    down = {**nodes, "new": node("new", version="2.0", state="draining")}
    down.pop("new2")
    snap = Snapshot.build(down, [done], stable=Target(version="2.0"))
    assert {n.id for n in snap.tracks[STABLE]["r1"].nodes} == {"old"}


def test_fallbacks_prefer_other_zones_then_regions() -> None:
    nodes = {
        "a1": node("a1", zone="a"),
        "a2": node("a2", zone="a"),
        "b1": node("b1", zone="b"),
        "x1": node("x1", region="r2", zone="x"),
    }
    rm = RegionMap(known=("r1", "r2"))
    snap = Snapshot.build(nodes)
    for seed in range(30):
        d = decide(snap, user(), rm.ranking("r1"), NoPending(), random.Random(seed), 2)
        assert d is not None
        chosen_zone = d.node.zone
        first = d.fallbacks[0]
        assert first.zone != chosen_zone or first.region != d.node.region
        assert d.node.id not in {f.id for f in d.fallbacks}
        assert len({f.id for f in d.fallbacks}) == 2


def test_no_capacity_is_none() -> None:
    snap = Snapshot.build({"a": node("a", state="draining"), "b": node("b", conns=5, capacity=5)})
    assert decide(snap, user(), ("r1",), NoPending(), random.Random(0), 2) is None


def test_pending_resets_on_report_and_window() -> None:
    now = [0.0]
    pending = Pending(window_s=10, clock=lambda: now[0])
    n = node("n", reported_at=1.0)
    pending.sync({"n": n})
    pending.add("n")
    pending.add("n")
    assert pending.get("n") == 2
    pending.sync({"n": n})  # same report: keep counting
    assert pending.get("n") == 2
    pending.sync({"n": node("n", reported_at=2.0)})  # fresh report includes them
    assert pending.get("n") == 0
    pending.add("n")
    now[0] = 11.0
    pending.tick()
    assert pending.get("n") == 0


@settings(max_examples=200)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2"]),
            st.sampled_from(["a", "b"]),
            st.sampled_from(["default", "canary", "beta"]),
            st.sampled_from(["1.0", "2.0", "2.1"]),
            st.sampled_from(["up", "draining"]),
            st.sampled_from([0.0, 1.0]),
        ),
        max_size=25,
    ),
    targets=st.lists(
        st.tuples(
            st.sampled_from([("canary", ""), ("beta", ""), ("", "2.0"), ("", "2.1")]),
            st.sampled_from(["running", "paused", "rolled_back", "draft", "promoted"]),
        ),
        max_size=4,
    ),
)
def test_snapshot_tracks_follow_the_definition(
    specs: list[tuple[str, str, str, str, str, float]], targets: list[tuple[tuple[str, str], str]]
) -> None:
    """Tracks as built (indexed by pool and version) equal their definition: stable is every
    usable node no fencing release targets; a routing release's track is its target's."""
    nodes = {
        f"n{i}": node(f"n{i}", region, zone, pool=pool, version=version, state=state, weight=w)
        for i, (region, zone, pool, version, state, w) in enumerate(specs)
    }
    releases = [
        Release(name=f"rel{i}", target=Target(pool=p, version=v), percent=50, state=state)  # type: ignore[arg-type]
        for i, ((p, v), state) in enumerate(targets)
    ]
    snap = Snapshot.build(nodes, releases)
    usable = [n for n in nodes.values() if n.state == "up" and n.weight > 0]

    def ids(track: str) -> set[str]:
        return {n.id for g in snap.tracks.get(track, {}).values() for n in g.nodes}

    fences = [r.target for r in releases if r.fences]
    assert ids(STABLE) == {
        n.id for n in usable if not any(t.selects(n.pool, n.version) for t in fences)
    }
    for r in releases:
        expected = {n.id for n in usable if r.target.selects(n.pool, n.version)}
        assert ids(r.name) == (expected if r.routes else set())
    again = Snapshot.build(nodes, releases, previous=snap)
    assert again.fragments == snap.fragments


def test_rebuild_reescapes_a_changed_endpoint() -> None:
    first = Snapshot.build({"a": node("a"), "b": node("b")})
    moved = NodeRecord(id="b", endpoint='ws://h/"new"', region="r1", zone="a")
    second = Snapshot.build({"a": node("a"), "b": moved}, previous=first)
    assert second.fragments["a"] is first.fragments["a"]
    assert second.fragments["b"] == '"node":"b","endpoint":"ws://h/\\"new\\""'


@settings(max_examples=300)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2", "r3"]),
            st.sampled_from(["default", "canary"]),
            st.integers(0, 3),  # conns, against capacity 2: some full
            st.sampled_from(["up", "draining"]),
        ),
        max_size=12,
    ),
    percent=st.sampled_from([0, 50, 100]),
    state=st.sampled_from(["running", "paused", "draft", "rolled_back"]),
    uid=st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
    home=st.sampled_from(["r1", "r2", "r3", None]),
    seed=st.integers(0, 2**32),
)
def test_explain_decision_tells_what_decide_does(
    specs: list[tuple[str, str, int, str]],
    percent: int,
    state: str,
    uid: str,
    home: str | None,
    seed: int,
) -> None:
    """The operator's explanation names the track, strategy and region the scheduler's
    decision lands in, whatever the nodes' room and the release's state."""
    nodes = {
        f"n{i}": node(f"n{i}", region, pool=pool, conns=min(conns, 2), capacity=2, state=st_)
        for i, (region, pool, conns, st_) in enumerate(specs)
    }
    release = Release(name="c", target=Target(pool="canary"), percent=percent, state=state)  # type: ignore[arg-type]
    snap = Snapshot.build(nodes, [release])
    ranking = RegionMap(known=("r1", "r2", "r3")).ranking(home)
    u = user(uid, home)
    why = explain_decision(snap, (release,), u, ranking, NoPending())
    d = decide(snap, u, ranking, NoPending(), random.Random(seed), 2)
    if d is None:
        assert (why.region, why.strategy) == (None, "none")
    else:
        assert (why.track, why.strategy, why.region) == (d.track, d.strategy, d.region)
        assert {r.region: r.with_room for r in why.regions}[d.region] > 0
