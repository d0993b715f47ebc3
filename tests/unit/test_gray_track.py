"""The pure decisions behind connections following a release (control/gray/track.py)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from control.gray.model import Release, RuleSet, Target, UserContext, Version
from control.gray.stable import Stable, hand_over_due, retiring
from control.gray.track import NodeTrack, merged, misplaced, serving

CANARY = NodeTrack("canary", "2.0")
STABLE = NodeTrack("default", "1.0")
V1 = Version.parse("1.0")


def release(percent: float, state: str = "running", name: str = "r1") -> Release:
    return Release(name=name, target=Target(pool="canary"), percent=percent, state=state)  # type: ignore[arg-type]


def user(i: int) -> UserContext:
    return UserContext(f"u{i}", "ios", V1, "north")


def moved(old: Release, new: Release, users: range) -> list[int]:
    """The users on the canary nodes under ``old`` that ``new`` sends away."""
    on_before = serving((old,), CANARY)
    placed = [i for i in users if RuleSet((old,)).first(user(i)) is not None]
    assert on_before is not None
    rules, on = RuleSet((new,)), serving((new,), CANARY)
    return [i for i in placed if misplaced(rules, on, user(i))]


def test_a_rollback_moves_every_canary_session_and_no_stable_one() -> None:
    r = release(50)
    back = dataclasses.replace(r, percent=0, state="rolled_back")
    placed = [i for i in range(2000) if RuleSet((r,)).first(user(i)) is not None]
    assert 800 < len(placed) < 1200
    assert moved(r, back, range(2000)) == placed
    # Unknown context (no app version): still moved on a rollback.
    assert misplaced(RuleSet((back,)), serving((back,), CANARY), None)
    # A stable node's sessions never move for a release.
    assert serving((back,), STABLE) is None
    assert not any(misplaced(RuleSet((back,)), None, user(i)) for i in range(100))


def test_lowering_the_percent_moves_exactly_the_users_left_outside() -> None:
    r = release(50)
    lower = dataclasses.replace(r, percent=20)
    out = moved(r, lower, range(2000))
    assert out and all(RuleSet((lower,)).first(user(i)) is None for i in out)
    kept = [i for i in range(2000) if RuleSet((lower,)).first(user(i)) is not None]
    assert not set(kept) & set(out)
    # A session of unknown context is not judged by the percent.
    assert not misplaced(RuleSet((lower,)), serving((lower,), CANARY), None)


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_raising_the_percent_moves_nobody(a: int, b: int) -> None:
    low, high = sorted((a, b))
    old, new = release(low / 100), release(high / 100)
    assert moved(old, new, range(300)) == []


def test_paused_still_serves_and_a_deleted_release_leaves_a_stable_node() -> None:
    r = release(30)
    paused = dataclasses.replace(r, state="paused")
    assert moved(r, paused, range(500)) == []
    assert serving((), CANARY) is None


def test_the_stable_target_retires_the_nodes_it_does_not_select() -> None:
    r = release(50)
    done = dataclasses.replace(r, percent=100, state="promoted")
    target = done.target
    # No promote yet: nobody retires.
    assert not retiring(None, None, STABLE.pool, STABLE.version)
    assert retiring(target, None, STABLE.pool, STABLE.version)
    assert not retiring(target, None, CANARY.pool, CANARY.version)
    # A node a release still fences (a next canary) is that release's, not retired.
    nxt = Release(name="r2", target=Target(version="1.0"), percent=5)
    assert not retiring(target, serving((nxt,), STABLE), STABLE.pool, STABLE.version)


def test_the_newest_promotion_is_handed_over_once() -> None:
    a = dataclasses.replace(release(100, name="a"), state="promoted")
    b = Release(name="b", target=Target(version="3.0"), percent=100, state="promoted")
    running = release(5, name="c")
    assert hand_over_due([(running, 9)], None) is None
    assert hand_over_due([(a, 4), (b, 7), (running, 9)], None) == (b, 7)
    done = Stable(target=b.target, release="b", release_revision=7)
    assert hand_over_due([(a, 4), (b, 7)], done) is None
    older = Stable(target=a.target, release="a", release_revision=4)
    assert hand_over_due([(a, 4), (b, 7)], older) == (b, 7)


def test_merged_keeps_the_schedulers_order() -> None:
    a, b, c = release(1, name="a"), release(2, name="b"), release(3, name="c")
    stored_b = dataclasses.replace(b, percent=9)
    assert merged((c, b), {"b": stored_b, "a": a}) == (c, stored_b, a)
