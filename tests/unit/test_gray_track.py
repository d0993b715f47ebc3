"""The pure decisions behind connections following a release (control/gray/track.py)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from control.gray.model import Release, RuleSet, Target, UserContext, Version
from control.gray.track import NodeTrack, merged, misplaced, promoted_away, serving

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


def test_promote_retires_the_nodes_the_target_does_not_select() -> None:
    r = release(50)
    done = dataclasses.replace(r, percent=100, state="promoted")
    assert promoted_away({"r1": r}, {"r1": done}, STABLE) == done
    assert promoted_away({"r1": r}, {"r1": done}, CANARY) is None
    # Only the change retires: a node that finds it promoted already stays.
    assert promoted_away({"r1": done}, {"r1": done}, STABLE) is None
    assert promoted_away({}, {"r1": done}, STABLE) is None


def test_merged_keeps_the_schedulers_order() -> None:
    a, b, c = release(1, name="a"), release(2, name="b"), release(3, name="c")
    stored_b = dataclasses.replace(b, percent=9)
    assert merged((c, b), {"b": stored_b, "a": a}) == (c, stored_b, a)
