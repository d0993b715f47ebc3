"""The load generator's pure parts: percentiles over windows, scenario parsing, the churn
schedule, the operator's plan."""

from __future__ import annotations

import itertools
import random

import pytest

from load.gen import churn
from load.gen.operator import plan
from load.gen.report import gray_figures, storm_figures
from load.gen.scenario import MAX_PER_WORKER, ScenarioError, parse
from load.gen.stats import Histogram, Timeline, Window

# -- percentiles -------------------------------------------------------------------------------


def test_percentiles_are_within_the_bucket_ratio_of_the_exact_ones() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(2, 1) for _ in range(20_000)]
    h = Histogram()
    for x in samples:
        h.add(x)
    ordered = sorted(samples)
    for p in (50, 90, 99):
        exact = ordered[int(len(ordered) * p / 100) - 1]
        got = h.percentile(p)
        assert got is not None and abs(got / exact - 1) < 0.05, (p, got, exact)


def test_an_empty_histogram_has_no_percentile_and_merging_adds_counts() -> None:
    a, b = Histogram(), Histogram()
    assert a.percentile(50) is None
    for _ in range(9):
        a.add(1.0)
    b.add(1000.0)
    a.merge(b)
    assert a.count == 10
    assert a.percentile(50) == pytest.approx(1.0, rel=0.05)
    assert a.percentile(100) == pytest.approx(1000.0, rel=0.05)


def test_percentiles_over_windows_keep_each_window_apart() -> None:
    t = Timeline()
    for second in range(10):
        w = Window()
        w.latency["endpoint"].add(10.0 if second < 5 else 100.0)
        t.add(second, 0, w)
    points = t.percentiles_over("endpoint", 5)
    assert [start for start, _ in points] == [0, 5]
    assert points[0][1][99] == pytest.approx(10.0, rel=0.05)
    assert points[1][1][50] == pytest.approx(100.0, rel=0.05)


def test_gauges_are_each_workers_latest_report_summed() -> None:
    t = Timeline()
    a, b, late = Window(online=3), Window(online=4), Window(online=5)
    a.counts["handshakes"] = 3
    t.add(0, 0, a)
    t.add(0, 1, b)
    assert t.seal(0).online == 7
    t.add(1, 0, late)  # worker 1 missed second 1: its last figure still counts
    sealed = t.seal(1)
    assert sealed.online == 9
    assert t.total().counts["handshakes"] == 3
    assert Window.from_data(a.to_data()).counts == a.counts


# -- scenarios ---------------------------------------------------------------------------------


def test_a_scenario_file_with_every_mistake_is_refused_with_every_problem() -> None:
    with pytest.raises(ScenarioError) as err:
        parse(
            {
                "scenario": "meltdown",
                "clients": 0,
                "server": "ftp://x",
                "churn": {"logouts_per_s": -1, "bogus": 1},
                "platforms": "ios,,",
                "colour": "red",
            },
            "s.yaml: ",
        )
    text = "\n".join(err.value.problems)
    for needle in (
        "s.yaml: scenario: one of steady",
        "clients: must be from 1",
        "server: a scheduler URL",
        "churn.logouts_per_s: must be from 0",
        "churn.bogus: unknown key",
        "colour: unknown key",
    ):
        assert needle in text, text


def test_too_many_clients_for_the_workers_names_the_least_worker_count() -> None:
    with pytest.raises(ScenarioError, match="give at least 3"):
        parse({"clients": 2 * MAX_PER_WORKER + 1, "workers": 2})
    assert parse({"clients": 50_000}).worker_count == 4


def test_storm_needs_a_pid_or_a_node_before_the_settle_phase() -> None:
    with pytest.raises(ScenarioError, match="storm: scenario storm needs"):
        parse({"scenario": "storm"})
    with pytest.raises(ScenarioError, match="exactly one of pid"):
        parse({"scenario": "storm", "storm": {"at_s": 3}})
    with pytest.raises(ScenarioError, match="before the settle phase"):
        storm = {"at_s": 16, "pid": 9}
        parse({"scenario": "storm", "duration_s": 20, "settle_s": 5, "storm": storm})
    s = parse({"scenario": "storm", "storm": {"at_s": 3, "pid": 1234}})
    assert s.storm is not None and s.storm.pid == 1234


def test_a_section_for_another_scenario_is_a_mistake() -> None:
    with pytest.raises(ScenarioError, match="a section for scenario drain"):
        parse({"scenario": "steady", "drain": {"node": "n0", "at_s": 1}})


# -- churn -------------------------------------------------------------------------------------


def test_churn_adds_up_to_the_population_rate_and_nobody_is_out_in_the_settle_phase() -> None:
    clients, rate, off, stop = 500, 25.0, 2.0, 60.0
    logouts = [churn.schedule(i, clients, rate, off, 1.0, stop, seed=3) for i in range(clients)]
    total = sum(len(x) for x in logouts)
    expected = rate * (stop - 1.0)
    assert 0.85 * expected < total < 1.1 * expected
    for mine in logouts:
        for a, b in itertools.pairwise(mine):
            assert b.at_s >= a.back_s  # back in before the next logout
        assert all(x.back_s == pytest.approx(x.at_s + off) and x.back_s < stop for x in mine)
        assert all(x.at_s > 1.0 for x in mine)


def test_churn_is_the_same_for_the_same_seed_and_none_without_a_rate() -> None:
    assert churn.schedule(4, 10, 1.0, 1.0, 0, 100, seed=1) == churn.schedule(
        4, 10, 1.0, 1.0, 0, 100, seed=1
    )
    assert churn.schedule(4, 10, 1.0, 1.0, 0, 100, seed=1) != churn.schedule(
        4, 10, 1.0, 1.0, 0, 100, seed=2
    )
    assert churn.schedule(4, 10, 0.0, 1.0, 0, 100, seed=1) == []
    assert churn.first_login(50, 100, 10.0) == 5.0


# -- the operator's plan -----------------------------------------------------------------------


def test_gray_plan_creates_steps_rolls_back_and_cleans_up_at_the_settle() -> None:
    s = parse(
        {
            "scenario": "gray",
            "duration_s": 40,
            "settle_s": 5,
            "gray": {"at_s": 2, "percents": [10, 50], "every_s": 3, "rollback_at_s": 20},
        }
    )
    steps = [(st.at_s, st.verb, st.args.get("percent")) for st in plan(s)]
    assert steps == [
        (2, "gray-create", None),
        (5, "gray-percent", 10.0),
        (8, "gray-percent", 50.0),
        (20, "gray-rollback", None),
        (35, "gray-delete", None),
    ]


def test_a_drain_is_undone_when_the_run_settles() -> None:
    s = parse({"scenario": "drain", "duration_s": 30, "drain": {"at_s": 4, "node": "n1"}})
    assert [(st.at_s, st.verb) for st in plan(s)] == [(4, "drain"), (25, "undrain")]


# -- the report's figures ----------------------------------------------------------------------


def _timeline(*seconds: tuple[dict[str, int], dict[str, int]]) -> Timeline:
    """Seconds of (connected by node, reconnects by reason), one worker."""
    t = Timeline()
    for i, (by_node, moved) in enumerate(seconds):
        w = Window(online=sum(by_node.values()))
        w.by_node.update(by_node)
        w.reconnects.update(moved)
        t.add(i, 0, w)
        t.seal(i)
    return t


def test_a_storm_is_measured_from_the_second_sealed_at_the_kills_tick() -> None:
    t = _timeline(
        ({"n0": 4, "n1": 4}, {}),
        ({"n0": 5, "n1": 5}, {}),  # sealed at tick 2, the one that killed n0
        ({"n1": 5}, {"lost": 5}),
        ({"n1": 8}, {}),
        ({"n1": 10}, {}),
    )
    st = storm_figures(t, 2)
    assert st["by_node_before"] == {"n0": 5, "n1": 5} and st["online_before"] == 10
    assert st["online_lowest"] == 5
    assert st["reconnects"] == {"lost": 5}
    assert st["recovered_after_s"] == 3  # the end of the third second after the tick
    assert storm_figures(t, 4)["recovered_after_s"] == 1
    assert (
        storm_figures(_timeline(({"n0": 3}, {}), ({}, {"lost": 3})), 1)["recovered_after_s"] is None
    )


def test_a_rollback_splits_the_moves_and_names_who_was_where_before_it() -> None:
    t = _timeline(
        ({"s0": 10}, {}),
        ({"s0": 6, "s1": 4}, {"drain": 1}),  # sealed at the rollback's tick
        ({"s0": 8, "s1": 2}, {"rollback": 2}),
        ({"s0": 10}, {"rollback": 2}),
    )
    g = gray_figures(t, 2)
    assert g == {
        "by_node_before_rollback": {"s0": 6, "s1": 4},
        "moved_before_rollback": {"drain": 1},
        "moved_after_rollback": {"rollback": 4},
    }
