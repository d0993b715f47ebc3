"""Self-preservation: the pure judgement and the stateful view both the scheduler and the
controller use (examples, then properties over random loss schedules)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from control.common.registry import (
    Loss,
    NodeRecord,
    PreservationPolicy,
    PreservingView,
    preserve,
)

POLICY = PreservationPolicy(threshold=0.5, window_s=10, grace_s=30)


def nodes(*ids: str) -> dict[str, NodeRecord]:
    return {i: NodeRecord(id=i, endpoint=f"ws://h/{i}", region="r") for i in ids}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_small_loss_is_served_at_once_but_final_only_after_the_window() -> None:
    got = preserve(nodes("a", "b", "c", "d"), nodes("a", "b", "c"), {}, None, 0, POLICY)
    assert set(got.nodes) == {"a", "b", "c"} and got.held_since is None
    assert got.final == frozenset() and got.losses == {"d": Loss(0)}
    later = preserve(nodes("a", "b", "c", "d"), nodes("a", "b", "c"), got.losses, None, 9.9, POLICY)
    assert later.final == frozenset()
    due = preserve(nodes("a", "b", "c", "d"), nodes("a", "b", "c"), got.losses, None, 10, POLICY)
    assert due.final == {"d"} and due.losses == {}


def test_mass_loss_is_held_then_believed() -> None:
    ref = nodes("a", "b", "c", "d", "e")
    got = preserve(ref, nodes("a"), {}, None, 100, POLICY)
    assert set(got.nodes) == set(ref) and got.held_since == 100 and not got.final
    assert "self-preservation" in got.message
    still = preserve(ref, nodes("a"), got.losses, got.held_since, 129, POLICY)
    assert set(still.nodes) == set(ref) and not still.final
    over = preserve(ref, nodes("a"), still.losses, still.held_since, 130, POLICY)
    assert set(over.nodes) == {"a"} and over.held_since is None
    assert over.final == {"b", "c", "d", "e"}  # the held nodes' losses are final at once


def test_losses_one_by_one_within_window_add_up_and_none_is_final_first() -> None:
    """The reported case: 6 of 10 nodes vanish one by one; before, the first 5 were applied
    (their users evicted) before the hold began."""
    clock = Clock()
    view = PreservingView(POLICY, clock)
    alive = nodes(*"abcdefghij")
    view.offer(dict(alive))
    finals: set[str] = set()
    for victim in "abcdef":
        clock.now += 0.5
        alive.pop(victim)
        result = view.offer(dict(alive))
        finals |= result.final
    assert not finals and result.held_since == 3.0
    assert len(result.nodes) == 10  # the scheduler serves the last full view
    assert view.deadline() == 33.0
    clock.now = 33.0
    over = view.tick()
    assert over.final == set("abcdef") and set(over.nodes) == set("ghij")
    assert view.deadline() is None and set(view.known) == set("ghij")


def test_recovery_releases_the_hold() -> None:
    clock = Clock()
    view = PreservingView(POLICY, clock)
    view.offer(nodes(*"abcd"))
    assert view.offer(nodes("a")).held_since is not None
    clock.now += 1
    back = view.offer(nodes(*"abcd"))
    assert back.held_since is None and back.message.startswith("recovered")
    assert not back.final and view.deadline() is None


def test_a_node_back_within_the_window_is_never_final() -> None:
    clock = Clock()
    view = PreservingView(POLICY, clock)
    view.offer(nodes(*"abcd"))
    view.offer(nodes(*"abc"))
    clock.now = 9
    view.offer(nodes(*"abcd"))
    clock.now = 20
    assert not view.tick().final and "d" in view.known


def test_held_view_keeps_live_updates() -> None:
    ref = nodes("a", "b", "c")
    fresh = {"a": NodeRecord(id="a", endpoint="ws://h/a", region="r", conns=42)}
    got = preserve(ref, fresh, {}, None, 0, POLICY)
    assert got.nodes["a"].conns == 42 and set(got.nodes) == {"a", "b", "c"}


def test_zero_grace_ends_the_hold_without_spinning() -> None:
    clock = Clock()
    view = PreservingView(PreservationPolicy(0.5, 1, 0), clock)
    view.offer(nodes(*"abcd"))
    first = view.offer(nodes("a"))
    assert first.held_since is None and first.message.startswith("grace over")
    assert view.deadline() == 1.0  # believed, final once a window old; no new hold
    clock.now = 1.0
    assert view.tick().final == {"b", "c", "d"}


# -- properties over random loss schedules ---------------------------------------------------


def simulate(
    count: int, vanish: dict[int, float], policy: PreservationPolicy, until: float
) -> tuple[dict[str, float], float | None]:
    """Drive a view as the controller does: offer at each vanishing, tick at each deadline.
    Returns when each node's loss turned final, and when the first hold began."""
    clock = Clock()
    view = PreservingView(policy, clock)
    alive = nodes(*(f"n{i}" for i in range(count)))
    view.offer(dict(alive))
    events = sorted((t, f"n{i}") for i, t in vanish.items())
    final_at: dict[str, float] = {}
    first_hold: float | None = None
    for _ in range(4 * count + 8):  # each step is an event or a deadline, each one-off
        deadline = view.deadline()
        next_event = events[0][0] if events else math.inf
        t = min(next_event, math.inf if deadline is None else deadline)
        if t > until:
            break
        clock.now = max(clock.now, t)
        if events and events[0][0] <= clock.now:
            while events and events[0][0] <= clock.now:
                alive.pop(events.pop(0)[1])
            result = view.offer(dict(alive))
        else:
            result = view.tick()
        if first_hold is None and result.held_since is not None:
            first_hold = result.held_since
        elif first_hold is None and result.message.startswith("grace over"):
            first_hold = clock.now  # a zero grace ends the hold it begins
        for nid in result.final:
            assert nid not in final_at, f"{nid} final twice"
            final_at[nid] = clock.now
    else:
        raise AssertionError("the view never settled")
    return final_at, first_hold


policies = st.builds(
    PreservationPolicy,
    threshold=st.floats(0.1, 0.9),
    window_s=st.floats(0.5, 20),
    grace_s=st.floats(0, 40),
)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, dict[int, float], PreservationPolicy]:
    count = draw(st.integers(1, 12))
    victims = draw(st.sets(st.integers(0, count - 1)))
    vanish = {i: draw(st.floats(0, 60)) for i in victims}
    return count, vanish, draw(policies)


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_no_node_is_final_before_window_and_every_one_by_grace_plus_window(
    schedule: tuple[int, dict[int, float], PreservationPolicy],
) -> None:
    count, vanish, policy = schedule
    horizon = max(vanish.values(), default=0) + policy.window_s + policy.grace_s + 1
    final_at, _ = simulate(count, vanish, policy, horizon)
    assert set(final_at) == {f"n{i}" for i in vanish}  # every lost node, and only those
    for i, at in vanish.items():
        final = final_at[f"n{i}"]
        assert final >= at + policy.window_s, f"n{i} final {final - at:.2f}s after it vanished"
        assert final <= at + policy.window_s + policy.grace_s + 1e-9


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 12), policies, st.data())
def test_a_mass_loss_within_the_window_evicts_nobody_before_grace(
    count: int, policy: PreservationPolicy, data: st.DataObject
) -> None:
    lost = data.draw(st.integers(math.floor(policy.threshold * count) + 1, count))
    # all within one window of the first (strictly: "at once")
    times = data.draw(st.lists(st.floats(0, policy.window_s * 0.999), min_size=lost, max_size=lost))
    vanish = dict(enumerate(times))
    final_at, first_hold = simulate(count, vanish, policy, 200)
    tripped = sorted(times)[math.floor(policy.threshold * count)]  # the loss that tips it
    assert first_hold == tripped
    assert min(final_at.values()) >= tripped + policy.grace_s
    assert len(final_at) == lost
