"""The alert rules' unit tests, as data: for each alert, input series and the alerts
expected at some times (an empty list: silent). ``render()`` writes them in promtool's
format with each expected alert's annotations filled in from alerts.yml (its templates
name labels only), so a case states only what it tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
RULES = HERE / "alerts.yml"
TESTS = HERE / "alerts_test.yml"

Labels = dict[str, str]
# (eval time, [labels of each alert expected then]); an empty list: silent
Expect = tuple[str, list[Labels]]


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def access(name: str, values: str, node: str, **labels: str) -> dict[str, str]:
    """A series of access node ``node``, with the labels Prometheus gives its target."""
    return series(
        name, values, cluster="c1", job="imctl-access", instance=f"{node}:9100", node=node, **labels
    )


CASES: dict[str, tuple[list[dict[str, str]], list[Expect]]] = {
    "ImctlAccessNodeDown": (
        [
            series("up", "1 1 0 0 0 0", job="imctl-access", cluster="c1", instance="n0:9100"),
            series("up", "1 1 1 1 1 1", job="imctl-access", cluster="c1", instance="n1:9100"),
            # a scheduler down is not an access node down
            series("up", "0 0 0 0 0 0", job="imctl-scheduler", cluster="c1", instance="s:8080"),
        ],
        [
            ("2m", []),  # just down: pending
            ("4m", [{"cluster": "c1", "instance": "n0:9100", "job": "imctl-access"}]),
        ],
    ),
    "ImctlHeartbeatFlushLag": (
        [
            access("imctl_access_heartbeat_lag_seconds", "0.5 0.5 20 25 30 35 40", "n0"),
            access("imctl_access_heartbeat_lag_seconds", "0.5x6", "n1"),
            # one slow flush, then caught up: no page
            access("imctl_access_heartbeat_lag_seconds", "0.5 20 0.5x5", "n2"),
        ],
        [
            ("1m", []),
            ("4m", [{"cluster": "c1", "node": "n0"}]),
        ],
    ),
    "ImctlOnlineUsersDropping": (
        [
            series("imctl_presence_online", "1000x10 700x10", cluster="c1", instance="ctl:8090"),
            # a 10% dip is not a drop
            series("imctl_presence_online", "1000x10 900x10", cluster="c2", instance="ctl:8090"),
            # too few users to judge
            series("imctl_presence_online", "50x10 10x10", cluster="c3", instance="ctl:8090"),
        ],
        [
            ("9m", []),
            ("14m", [{"cluster": "c1"}]),
        ],
    ),
    "ImctlPresenceShardDown": (
        [
            series(
                "imctl_presence_shard_breaker",
                "0 0 1 1 1 1",
                cluster="c1",
                shard="s0",
                state="open",
            ),
            series("imctl_presence_shard_breaker", "0x5", cluster="c1", shard="s1", state="open"),
            series("imctl_presence_shard_ops_total", "0+100x5", cluster="c1", shard="s1"),
            series("imctl_presence_shard_errors_total", "0+1x5", cluster="c1", shard="s1"),
            # a fifth of its calls fail, breaker or not
            series("imctl_presence_shard_ops_total", "0+100x5", cluster="c1", shard="s2"),
            series("imctl_presence_shard_errors_total", "0+20x5", cluster="c1", shard="s2"),
        ],
        [
            ("1m", []),  # pending everywhere
            ("4m", [{"cluster": "c1", "shard": "s0"}, {"cluster": "c1", "shard": "s2"}]),
        ],
    ),
    "ImctlRingMigrationStalled": (
        [
            series("imctl_presence_ring_migrating", "0 0 1x40", cluster="c1"),
            series("imctl_presence_ring_moved_total", "0 0 5 10 15 20x37", cluster="c1"),
            # still moving: slow is not stalled
            series("imctl_presence_ring_migrating", "0 0 1x40", cluster="c2"),
            series("imctl_presence_ring_moved_total", "0 0 0+3x40", cluster="c2"),
        ],
        [
            ("12m", []),
            ("30m", [{"cluster": "c1"}]),
        ],
    ),
    "ImctlControllerNoLeader": (
        [
            series("imctl_controller_leader", "1 1 0 0 0 0", cluster="c1", instance="a:8090"),
            series("imctl_controller_leader", "0x5", cluster="c1", instance="b:8090"),
            series("up", "1x5", cluster="c1", job="imctl-controller", instance="a:8090"),
            series("up", "1x5", cluster="c1", job="imctl-controller", instance="b:8090"),
            # the only controller gone: its series stale, its target down
            series("imctl_controller_leader", "1 1 stale", cluster="c2", instance="x:8090"),
            series("up", "1 1 0 0 0 0", cluster="c2", job="imctl-controller", instance="x:8090"),
            # a standby took over: still led
            series("imctl_controller_leader", "1 1 0 0 0 0", cluster="c3", instance="a:8090"),
            series("imctl_controller_leader", "0 0 1 1 1 1", cluster="c3", instance="b:8090"),
        ],
        [
            ("1m", []),
            ("4m", [{"cluster": "c1"}, {"cluster": "c2"}]),
        ],
    ),
    "ImctlSchedulerNoCapacity": (
        [
            series("imctl_scheduler_decisions_total", "0+100x10", cluster="c1", result="ok"),
            series(
                "imctl_scheduler_decisions_total", "0+10x10", cluster="c1", result="no_capacity"
            ),
            series("imctl_scheduler_decisions_total", "0+100x10", cluster="c2", result="ok"),
            series("imctl_scheduler_decisions_total", "0+1x10", cluster="c2", result="no_capacity"),
        ],
        [
            ("2m", []),
            ("5m", [{"cluster": "c1"}]),
        ],
    ),
    "ImctlSchedulerRateLimitStorm": (
        [
            series("imctl_scheduler_decisions_total", "0+100x15", cluster="c1", result="ok"),
            series(
                "imctl_scheduler_decisions_total", "0+50x15", cluster="c1", result="rate_limited"
            ),
            series("imctl_scheduler_decisions_total", "0+100x15", cluster="c2", result="ok"),
            series(
                "imctl_scheduler_decisions_total", "0+10x15", cluster="c2", result="rate_limited"
            ),
        ],
        [
            ("4m", []),
            ("10m", [{"cluster": "c1"}]),
        ],
    ),
    "ImctlRegionNoHeadroom": (
        [
            access(
                "imctl_access_node_info",
                "1x10",
                "n0",
                region="north",
                zone="a",
                pool="default",
                version="1.0",
            ),
            access(
                "imctl_access_node_info",
                "1x10",
                "n1",
                region="north",
                zone="b",
                pool="default",
                version="1.0",
            ),
            access(
                "imctl_access_node_info",
                "1x10",
                "n2",
                region="south",
                zone="a",
                pool="default",
                version="1.0",
            ),
            *(access("imctl_access_capacity", "1000x10", n) for n in ("n0", "n1", "n2")),
            # north: n0 nearly full, n1 half full but draining (no room)
            access("imctl_access_connections", "950x10", "n0"),
            access("imctl_access_connections", "500x10", "n1"),
            access("imctl_access_draining", "0x10", "n0"),
            access("imctl_access_draining", "1x10", "n1"),
            # south: plenty
            access("imctl_access_connections", "100x10", "n2"),
            access("imctl_access_draining", "0x10", "n2"),
        ],
        [
            ("3m", []),
            ("10m", [{"cluster": "c1", "region": "north"}]),
        ],
    ),
    "ImctlCanaryWorseThanStable": (
        [
            series(
                "imctl_gray_analysis_total",
                "0 0 1 1 1 1",
                cluster="c1",
                release="r1",
                verdict="breach",
            ),
            series(
                "imctl_gray_analysis_total", "0+1x5", cluster="c1", release="r2", verdict="pass"
            ),
            series(
                "imctl_gray_analysis_total", "0x5", cluster="c1", release="r2", verdict="breach"
            ),
        ],
        [
            ("1m", []),
            ("3m", [{"cluster": "c1", "release": "r1"}]),
        ],
    ),
}


def _fill(template: str, labels: Labels) -> str:
    """promtool's rendering of a template that names labels only."""
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)


def rules() -> dict[str, dict[str, Any]]:
    """Every rule in alerts.yml by alert name."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def render() -> str:
    by_name = rules()
    tests = []
    for name, (inputs, expects) in CASES.items():
        rule = by_name[name]
        checks = []
        for at, alerts in expects:
            expected = []
            for labels in alerts:
                full = {**labels, **rule.get("labels", {})}
                notes = {k: _fill(v, full) for k, v in rule["annotations"].items()}
                expected.append({"exp_labels": full, "exp_annotations": notes})
            checks.append({"eval_time": at, "alertname": name, "exp_alerts": expected})
        tests.append(
            {"name": name, "interval": "1m", "input_series": inputs, "alert_rule_test": checks}
        )
    doc = {"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": tests}
    head = "# Generated from alert_cases.py by `python -m dashboards`: edit that, not this.\n"
    return head + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)
