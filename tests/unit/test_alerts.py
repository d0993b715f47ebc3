"""The alert rules (dashboards/alerts.yml) with Debian's promtool: they load, each has its
runbook, and each has unit tests (dashboards/alerts_test.yml) that see it fire when it
should and stay silent when it should not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards import alert_cases
from dashboards.alert_cases import CASES, RULES, TESTS, rules

PROMTOOL = shutil.which("promtool")
# The alerts issue 17 asks for, each by the rule that raises it.
REQUIRED = {
    "access node down": "ImctlAccessNodeDown",
    "online users dropping sharply": "ImctlOnlineUsersDropping",
    "scheduler 503s": "ImctlSchedulerNoCapacity",
    "429 storms": "ImctlSchedulerRateLimitStorm",
    "no capacity headroom in a region": "ImctlRegionNoHeadroom",
    "presence shard down or breaker open": "ImctlPresenceShardDown",
    "heartbeat flush lag": "ImctlHeartbeatFlushLag",
    "migration stalled": "ImctlRingMigrationStalled",
    "canary worse than stable": "ImctlCanaryWorseThanStable",
    "controller without a leader": "ImctlControllerNoLeader",
}


def promtool(*args: str, cwd: Path = RULES.parent) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.fail("promtool is missing: install Debian's prometheus (scripts/test.sh does)")
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_load_in_promtool() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_required_alert_exists_with_a_runbook() -> None:
    found = rules()
    missing = {what: name for what, name in REQUIRED.items() if name not in found}
    assert not missing, f"no rule for {missing}"
    for name, rule in found.items():
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(notes.get(key, "")).strip(), f"{name} has no {key}"
        assert rule.get("labels", {}).get("severity") in ("page", "ticket"), name


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    for name in rules():
        assert name in CASES, f"{name} has no unit test in alert_cases.py"
        expects = CASES[name][1]
        assert any(alerts for _, alerts in expects), f"{name}: no case where it fires"
        assert any(not alerts for _, alerts in expects), f"{name}: no case where it is silent"


def test_promtool_unit_tests_pass() -> None:
    assert TESTS.read_text() == alert_cases.render(), "alerts_test.yml is stale"
    done = promtool("test", "rules", TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The cases bite: the same tests over rules whose thresholds were loosened fail."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = "1h"  # nothing fires within any case's window
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc))
    (tmp_path / TESTS.name).write_text(TESTS.read_text())
    done = promtool("test", "rules", TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    for name, (_, expects) in CASES.items():
        if any(alerts for _, alerts in expects):
            assert f"alertname: {name}," in out, f"{name}'s tests did not notice"
