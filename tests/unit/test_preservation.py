from __future__ import annotations

from control.common.registry import NodeRecord, PreservationPolicy, PreservingView, preserve

POLICY = PreservationPolicy(threshold=0.5, window_s=10, grace_s=30)


def nodes(*ids: str) -> dict[str, NodeRecord]:
    return {i: NodeRecord(id=i, endpoint=f"ws://h/{i}", region="r") for i in ids}


def test_small_loss_applies() -> None:
    got = preserve(nodes("a", "b", "c", "d"), nodes("a", "b"), None, 0, POLICY)
    assert set(got.nodes) == {"a", "b"} and got.held_since is None


def test_mass_loss_is_held_then_accepted() -> None:
    ref = nodes("a", "b", "c", "d", "e")
    got = preserve(ref, nodes("a"), None, 100, POLICY)
    assert set(got.nodes) == set(ref) and got.held_since == 100
    assert "self-preservation" in got.message
    still = preserve(ref, nodes("a"), got.held_since, 120, POLICY)
    assert set(still.nodes) == set(ref)
    over = preserve(ref, nodes("a"), got.held_since, 130, POLICY)
    assert set(over.nodes) == {"a"} and over.held_since is None


def test_losses_one_by_one_within_window_add_up() -> None:
    now = [0.0]
    view = PreservingView(POLICY, clock=lambda: now[0])
    alive = nodes(*"abcdefgh")
    view.offer(alive)
    held = None
    for victim in "abcde":
        now[0] += 0.5
        alive.pop(victim)
        held = view.offer(dict(alive))
    assert held is not None and held.held_since is not None
    assert len(held.nodes) == 8  # the last full view is served
    now[0] += 31
    final = view.offer(dict(alive))
    assert set(final.nodes) == set("fgh") and final.held_since is None


def test_recovery_releases_the_hold() -> None:
    now = [0.0]
    view = PreservingView(POLICY, clock=lambda: now[0])
    view.offer(nodes(*"abcd"))
    assert view.offer(nodes("a")).held_since is not None
    now[0] += 1
    back = view.offer(nodes(*"abcd"))
    assert back.held_since is None and back.message.startswith("recovered")


def test_held_view_keeps_live_updates() -> None:
    ref = nodes("a", "b", "c")
    fresh = {"a": NodeRecord(id="a", endpoint="ws://h/a", region="r", conns=42)}
    got = preserve(ref, fresh, None, 0, POLICY)
    assert got.nodes["a"].conns == 42 and set(got.nodes) == {"a", "b", "c"}
