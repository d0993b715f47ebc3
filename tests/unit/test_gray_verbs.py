"""The SRE verbs' state rules (control/gray/verbs.py) and the dry-run preview
(control/gray/preview.py): pure, no store."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.gray.audit import diff
from control.gray.model import Include, Release, Target, VersionRange
from control.gray.preview import SAMPLE_SIZE, moves, sample
from control.gray.verbs import (
    ENDED,
    VerbRefused,
    check_apply,
    check_create,
    next_step,
    step_position,
    transition,
)

percents = st.integers(min_value=0, max_value=10_000).map(lambda b: b / 100)
salts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", max_size=12)


def release(percent: float = 10.0, state: Any = "running", **kw: Any) -> Release:
    return Release(name="canary", target=Target(pool="canary"), percent=percent, state=state, **kw)


def refused(current: Release, verb: str, **args: Any) -> VerbRefused:
    with pytest.raises(VerbRefused) as caught:
        transition(current, verb, args)
    return caught.value


# -- the state rules ------------------------------------------------------------------------------


def test_step_takes_the_next_step_above_the_percent() -> None:
    plan = (1.0, 5.0, 25.0, 50.0, 100.0)
    assert transition(release(0, steps=plan), "step", {}).release.percent == 1.0
    assert transition(release(5, steps=plan), "step", {}).release.percent == 25.0
    # Between steps (set by hand): the next one above, not the one after the last taken.
    assert transition(release(7.5, steps=plan), "step", {}).release.percent == 25.0
    assert step_position(release(7.5, steps=plan)) == {"at": 2, "of": 5, "next": 25.0}
    assert next_step(release(100, steps=plan)) is None


def test_step_with_no_step_left_is_a_400_naming_the_percent() -> None:
    exc = refused(release(50, steps=(1.0, 5.0, 50.0)), "step")
    assert exc.status == 400 and "at 50%" in exc.message and "50.0" in exc.message
    assert refused(release(5), "step").status == 400  # no plan at all


def test_set_percent_checks_range_and_granularity() -> None:
    assert transition(release(10), "set-percent", {"percent": 25}).release.percent == 25.0
    assert transition(release(10), "set-percent", {"percent": 0.01}).release.percent == 0.01
    for bad in (-1, 100.5, 0.001, "10", True, None):
        exc = refused(release(10), "set-percent", percent=bad)
        assert exc.status == 400 and exc.message.startswith("percent:"), (bad, exc.message)
    assert refused(release(10), "set-percent").problems == ("percent: required",)


def test_pause_and_resume_only_from_running_or_paused() -> None:
    assert transition(release(), "pause", {}).release.state == "paused"
    assert transition(release(state="paused"), "resume", {}).release.state == "running"
    # Pausing a paused release changes nothing (the API then writes nothing).
    assert transition(release(state="paused"), "pause", {}).release == release(state="paused")
    for verb in ("pause", "resume"):
        exc = refused(release(state="draft"), verb)
        assert (exc.status, exc.extra["state"]) == (409, "draft")


def test_promote_and_rollback() -> None:
    promoted = transition(release(25), "promote", {})
    assert (promoted.release.percent, promoted.release.state) == (100.0, "promoted")
    back = transition(release(25), "rollback", {"over_s": 30})
    assert (back.release.percent, back.release.state) == (0.0, "rolled_back")
    assert dict(back.figures) == {"over_s": 30.0}
    assert dict(transition(release(25), "rollback", {}).figures) == {"over_s": 60.0}
    assert refused(release(), "rollback", over_s=-1).status == 400
    assert refused(release(), "rollback", over_s=86_401).status == 400


@pytest.mark.parametrize("state", sorted(ENDED))
@pytest.mark.parametrize(
    "verb,args",
    [
        ("set-percent", {"percent": 5}),
        ("step", {}),
        ("pause", {}),
        ("resume", {}),
        ("promote", {}),
        ("rollback", {}),
    ],
)
def test_an_ended_release_refuses_every_verb(state: str, verb: str, args: Any) -> None:
    exc = refused(release(state=state, steps=(50.0,)), verb, **args)
    assert exc.status == 409 and exc.extra == {"state": state} and state in exc.message


def test_unknown_verbs_and_arguments() -> None:
    assert refused(release(), "explode").status == 404
    exc = refused(release(), "pause", percent=5)
    assert exc.status == 400 and exc.problems == ("percent: unknown field for pause",)


def test_apply_and_create_never_end_a_release_nor_revive_one() -> None:
    current = release(10)
    check_apply(current, release(20))
    check_apply(current, release(20, state="paused"))
    with pytest.raises(VerbRefused) as caught:
        check_apply(current, release(20, state="promoted"))
    assert caught.value.status == 400 and "imctl gray promote" in caught.value.message
    with pytest.raises(VerbRefused) as caught:
        check_apply(release(state="rolled_back"), release(20))
    assert caught.value.status == 409
    with pytest.raises(VerbRefused) as caught:
        check_apply(current, dataclasses.replace(release(20), name="other"))
    assert caught.value.status == 400
    check_create(release(state="draft"))
    with pytest.raises(VerbRefused):
        check_create(release(state="rolled_back"))


def test_diff_names_only_changed_fields_as_plain_data() -> None:
    before = release(10)
    after = dataclasses.replace(before, percent=25.0, include=Include(regions=("north",)))
    changes = diff(before, after)
    assert set(changes) == {"percent", "include"}
    assert changes["percent"] == (10.0, 25.0)
    assert changes["include"][1]["regions"] == ["north"]
    created = diff(None, before)
    assert created["name"] == (None, "canary") and created["target"] == (None, {"pool": "canary"})


# -- the preview --------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(p=percents, q=percents, salt=salts)
def test_raising_the_percent_never_moves_a_user_out(p: float, q: float, salt: str) -> None:
    low, high = sorted((p, q))
    moved = moves(release(low, salt=salt), release(high, salt=salt), size=2_000)
    assert moved.out_of == 0
    if high - low >= 10:
        assert moved.into > 0


def test_ten_to_twenty_five_moves_only_users_into_the_release() -> None:
    before = release(10)
    after = transition(before, "set-percent", {"percent": 25}).release
    moved = moves(before, after)
    assert moved.sample == SAMPLE_SIZE and moved.out_of == 0
    assert 0.14 <= moved.share <= 0.16, moved  # 15 % of the sample, ± sampling noise


@settings(max_examples=20, deadline=None)
@given(p=percents, salt=salts)
def test_rollback_moves_everyone_out(p: float, salt: str) -> None:
    before = release(p, salt=salt, include=Include(uids=("vip-1", "vip-2")))
    after = transition(before, "rollback", {}).release
    moved = moves(before, after, size=2_000)
    assert moved.into == 0
    assert moved.out_of == moves(None, before, size=2_000).into  # every user it held
    assert moved.out_of >= 2  # at least the two listed users


def test_lowering_the_percent_moves_only_users_out() -> None:
    moved = moves(release(50), release(20))
    assert moved.into == 0 and 0.28 <= moved.share <= 0.32, moved


def test_a_filter_change_is_seen_by_the_sample() -> None:
    versions = (VersionRange.parse(">=5.2,<6"),)
    before = release(100)
    after = release(100, include=Include(regions=("north",), app_versions=versions))
    users = sample([before, after], 100)
    assert {u.region for u in users} == {None, "north"}
    assert {str(u.app_version) for u in users} >= {"0", "5.2", "6"}
    moved = moves(before, after)
    assert moved.into == 0 and 0.5 < moved.share < 1.0, moved


def test_a_paused_or_draft_side_routes_nobody() -> None:
    assert moves(release(10), release(10, state="paused")).share == 0.0
    assert moves(release(10, state="draft"), release(10)).into > 0
