"""The pure rebalance plan (control/common/rebalance.py): quotas, whole-number slices of
one cluster-wide rate, rounds in windows that never overlap."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.common.errors import BadRequest
from control.common.rebalance import (
    SPACING,
    NodeLoad,
    RebalancePlan,
    RebalanceRequest,
    check,
    new_round,
    plan_round,
    rates_for,
    ratio,
    shed_plan,
)


def loads(*conns: int, region: str = "north") -> dict[str, NodeLoad]:
    return {f"n{i}": NodeLoad(region, c, 10_000) for i, c in enumerate(conns)}


def test_three_hot_nodes_and_two_new_shed_down_to_the_mean() -> None:
    plan = shed_plan(loads(1000, 1000, 1000, 0, 0), 1.1)
    assert plan == {"n0": 400, "n1": 400, "n2": 400}
    after = loads(600, 600, 600, 600, 600)
    assert ratio(after, "north") == 1.0 and shed_plan(after, 1.1) == {}


def test_a_balanced_region_sheds_nothing_and_regions_are_apart() -> None:
    both = {
        **loads(100, 105),
        **{f"s{i}": NodeLoad("south", c, 10_000) for i, c in enumerate((300, 0))},
    }
    assert shed_plan(both, 1.1) == {"s0": 150}


def test_one_rate_is_cut_into_whole_slices_by_quota() -> None:
    assert rates_for({"n0": 300, "n1": 100}, 40) == {"n0": 30.0, "n1": 10.0}
    # 50 frames a second for three equal sheds: 17 + 17 + 16, never 16.67 each (a node
    # whose frames are 1/16.67 s apart can put 17 in a 1 s window).
    rates = rates_for({"n0": 333, "n1": 333, "n2": 333}, 50)
    assert sorted(rates.values()) == [16.0, 17.0, 17.0]
    # More shedders than frames a second: the biggest go first, one frame each.
    assert rates_for({"a": 5, "b": 50, "c": 20}, 2.5) == {"b": 1.0, "c": 1.0}
    # Under one a second: the biggest alone, at the rate asked.
    assert rates_for({"a": 5, "b": 50}, 0.5) == {"b": 0.5}
    # Never faster than the quota needs.
    assert rates_for({"a": 2, "b": 3}, 100) == {"a": 2.0, "b": 3.0}


@given(
    st.dictionaries(st.sampled_from("abcdefghij"), st.integers(0, 10_000), max_size=10),
    st.floats(0.01, 5_000),
)
def test_rates_add_up_to_at_most_the_cluster_limit(quotas: dict[str, int], rate: float) -> None:
    rates = rates_for(quotas, rate)
    assert sum(rates.values()) <= rate
    assert all(r > 0 and quotas[n] > 0 for n, r in rates.items())
    if rate >= 1:
        assert all(r == int(r) and r <= quotas[n] for n, r in rates.items())
    if any(q > 0 for q in quotas.values()):
        assert rates  # somebody always sheds while somebody has to


def place(after: list[int], count: int) -> list[int]:
    """Clients that reconnect land on the least loaded node, one at a time (the scheduler
    places by load)."""
    for _ in range(count):
        low = after.index(min(after))
        after[low] += 1
    return after


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=12), st.floats(1.0, 3.0))
def test_quotas_bring_max_over_mean_within_the_target_and_nobody_below_the_mean(
    conns: list[int], until: float
) -> None:
    current = loads(*conns)
    quotas = shed_plan(current, until)
    assert all(0 < q <= current[nid].conns for nid, q in quotas.items())
    total = sum(conns)
    if not quotas:
        assert ratio(current, "north") <= until
        return
    mean = total / len(conns)
    # Nobody is asked to shed below the mean.
    assert all(current[nid].conns - q >= mean for nid, q in quotas.items())
    after = place([c - quotas.get(f"n{i}", 0) for i, c in enumerate(conns)], sum(quotas.values()))
    # Within the target (or within one connection of the mean on a tiny region).
    assert max(after) / mean <= max(until, math.ceil(mean) / mean) + 1e-9


@given(
    st.lists(st.integers(0, 3000), min_size=2, max_size=8),
    st.floats(1.0, 2.0),
    st.floats(0.2, 500),
    st.floats(0, 10),
)
def test_a_round_fits_its_window_after_the_last_one(
    conns: list[int], until: float, rate: float, earlier_end: float
) -> None:
    req = RebalanceRequest(rate, until, 100.0, "ops")
    previous = RebalancePlan(3, 100.0, 1.0, 1000.0 + earlier_end, until, rate)
    plan = new_round(loads(*conns), req, previous, 1000.0, 0.25)
    if plan is None:
        assert plan_round(loads(*conns), until, rate) == {}
        return
    assert plan.round == 4 and plan.start >= previous.end and plan.start >= 1000.25
    assert sum(s.rate for s in plan.slices.values()) <= rate
    for piece in plan.slices.values():
        assert plan.start + piece.quota * SPACING / piece.rate <= plan.end
    assert RebalancePlan.from_json(plan.to_json()) == plan


def test_a_new_request_starts_again_at_round_one() -> None:
    previous = RebalancePlan(7, 1.0, 1.0, 2.0, 1.1, 10.0)
    plan = new_round(loads(100, 0), RebalanceRequest(10, 1.1, 5.0, "ops"), previous, 10.0, 0)
    assert plan is not None and plan.round == 1 and plan.request_at == 5.0


@pytest.mark.parametrize(
    "raw,named",
    [
        (b"nope", "not JSON"),
        (b"[]", "expected a mapping"),
        (
            b'{"round": 1, "request_at": 1, "start": 5, "end": 1, "until_ratio": 1.1, '
            b'"max_rate": 10}',
            "end: before start",
        ),
        (
            b'{"round": 1, "request_at": 1, "start": 1, "end": 5, "until_ratio": 1.1, '
            b'"max_rate": 10, "slices": {"n0": {"quota": 5, "rate": 11}}}',
            "more than max_rate",
        ),
        (
            b'{"round": 0, "request_at": 1, "start": 1, "end": 5, "until_ratio": 1.1, '
            b'"max_rate": 10}',
            "round",
        ),
    ],
)
def test_a_bad_plan_is_refused_naming_what_is_wrong(raw: bytes, named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        RebalancePlan.from_json(raw)


@pytest.mark.parametrize(
    "rate,until", [(0, 1.1), (-1, 1.1), (True, 1.1), ("x", 1.1), (10, 0.9), (10, float("nan"))]
)
def test_bad_settings_are_named(rate: object, until: object) -> None:
    assert check(rate, until)


def test_a_request_round_trips_and_a_bad_one_is_refused() -> None:
    req = RebalanceRequest(50.0, 1.1, 1.0, "ops")
    assert RebalanceRequest.from_json(req.to_json()) == req
    with pytest.raises(ValueError, match="max_rate"):
        RebalanceRequest.from_json(b'{"max_rate": 0, "until_ratio": 1.1, "at": 1, "by": "x"}')
