"""The pure rebalance plan (control/access/rebalance.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.access.rebalance import NodeLoad, rate_share, ratio, shed_plan
from control.common.rebalance import RebalanceRequest, check


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


def test_the_rate_is_shared_by_the_sheds() -> None:
    plan = {"n0": 300, "n1": 100}
    assert rate_share(plan, "n0", 40) == 30 and rate_share(plan, "n1", 40) == 10
    assert rate_share(plan, "n2", 40) == 0


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=12), st.floats(1.0, 3.0))
def test_after_the_plan_no_node_is_below_the_mean_or_above_the_line(
    conns: list[int], until: float
) -> None:
    current = loads(*conns)
    plan = shed_plan(current, until)
    assert all(0 < n <= current[nid].conns for nid, n in plan.items())
    total = sum(conns)
    if plan:
        mean = total / len(conns)
        assert all(current[nid].conns - n >= mean - 1 for nid, n in plan.items())
    else:
        assert ratio(current, "north") <= until


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
