"""``imctl gray ...`` against the admin API's real gray routes on loopback, over the
in-memory release store of tests/releases.py (its revisions count 1, 2, 3..., so the
output is the same on every run): output, exit codes, and what each verb wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control.admin.config import AdminConfig
from control.admin.gray import RELEASES
from control.admin.routes import mount
from control.common.auth import Grant, TokenTable
from tests.releases import MemoryReleaseStore
from tests.stand_in import run, served_in_thread

VIEWER, OPERATOR = "v" * 24, "o" * 24

CANARY_YAML = """\
name: canary
target: {pool: canary}
percent: 10
steps: [1, 10, 25, 50, 100]
include:
  regions: [north]
"""

BROKEN_YAML = """\
name: Canary One
target: {}
percent: 120
steps: [50, 5]
colour: blue
"""


@pytest.fixture
def store() -> MemoryReleaseStore:
    return MemoryReleaseStore()


@pytest.fixture
def server(store: MemoryReleaseStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The gray routes on their own loop in a thread (``main`` runs its own loop)."""
    monkeypatch.delenv("IMCTL_SERVER", raising=False)
    monkeypatch.setenv("IMCTL_TOKEN", OPERATOR)
    grants = TokenTable((Grant("ops", VIEWER, "viewer"), Grant("sre", OPERATOR, "operator")))
    app = web.Application()
    mount(AdminConfig("test", "/t-gray", frozenset(), 1, grants))(app)
    app[RELEASES] = store
    with served_in_thread(app) as url:
        yield url


def gray(capsys: pytest.CaptureFixture[str], server: str, *argv: str) -> tuple[int, str, str]:
    return run(capsys, ["gray", *argv, "--server", server])


def as_json(capsys: pytest.CaptureFixture[str], server: str, *argv: str) -> Any:
    code, out, err = gray(capsys, server, *argv, "--output", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "canary.yaml").write_text(CANARY_YAML)
    (tmp_path / "broken.yaml").write_text(BROKEN_YAML)
    (tmp_path / "list.yaml").write_text("- name: a\n")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "faster.yaml").write_text(CANARY_YAML.replace("percent: 10", "percent: 25"))
    return tmp_path


def test_a_release_file_with_problems_lists_every_one(
    capsys: pytest.CaptureFixture[str], server: str, store: MemoryReleaseStore, files: Path
) -> None:
    path = str(files / "broken.yaml")
    code, out, err = gray(capsys, server, "create", "-f", path)
    assert (code, out) == (2, "")
    assert err == (
        f"imctl: {path}: the release has 5 problems:\n"
        "  - release.colour: unknown key (expected one of: analysis, exclude, include, name, "
        "percent, rollback_over_s, salt, state, step_interval_s, steps, target)\n"
        "  - release.name: 'Canary One' does not match [a-z0-9][a-z0-9-]{0,62}\n"
        "  - release.target: set exactly one of pool or version\n"
        "  - release.percent: must be <= 100, got 120.0\n"
        "  - release.steps: must be increasing\n"
    )
    answer = as_json_failure(capsys, server, "create", "-f", path)
    assert len(answer["problems"]) == 5 and answer["ok"] is False
    for name, text in (("list.yaml", "holds one release"), ("bad.yaml", "not YAML at line")):
        code, out, err = gray(capsys, server, "create", "-f", str(files / name))
        assert code == 2 and text in err, err
    code, _, err = gray(capsys, server, "create", "-f", str(files / "nowhere.yaml"))
    assert code == 2 and "cannot read" in err
    assert store.stored == {} and store.audit == []


def as_json_failure(capsys: pytest.CaptureFixture[str], server: str, *argv: str) -> Any:
    code, out, _ = gray(capsys, server, *argv, "--output", "json")
    assert code == 2
    return json.loads(out)


def test_create_dry_run_then_create_list_and_status(
    capsys: pytest.CaptureFixture[str], server: str, store: MemoryReleaseStore, files: Path
) -> None:
    path = str(files / "canary.yaml")
    code, out, err = gray(capsys, server, "create", "-f", path, "--dry-run")
    assert code == 0, err
    head, fields, moves = out.split("\n\n")
    assert head == "dry run: release canary would be created (nothing written)"
    assert fields.splitlines()[0].split() == ["FIELD", "BEFORE", "AFTER"]
    rows = {line.split()[0]: line.split()[1:] for line in fields.splitlines()[1:]}
    assert rows["percent"] == ["-", "10.0"] and rows["name"] == ["-", "canary"]
    assert rows["include"][1].startswith('{"app_versions":[],"platforms":[],"regions":["north"]')
    assert moves.startswith("moves ") and "sampled users" in moves and "0 out of it" in moves
    assert store.stored == {}

    code, out, err = gray(capsys, server, "create", "-f", path, "--reason", "ticket 7")
    assert (code, out) == (0, "created: release canary running at 10% (revision 1)\n"), err
    code, out, _ = gray(capsys, server, "create", "-f", path)
    assert code == 1 and "HTTP 409" in _ and "already exists (revision 1)" in _

    code, out, _ = gray(capsys, server, "list")
    assert out == (
        "NAME    STATE    PERCENT  TARGET       REVISION\n"
        "canary  running  10%      pool canary  1       \n"
    )
    code, out, _ = gray(capsys, server, "status", "canary")
    assert out == (
        "release canary: running (revision 1)\n"
        "\n"
        "target    pool canary\n"
        "percent   10%\n"
        "steps     1, 10, 25, 50, 100 (reached 2 of 5; next 25%)\n"
        "interval  600s\n"
        "who       regions north\n"
        "salt      canary (the name)\n"
        "analysis  none yet\n"
    )
    assert as_json(capsys, server, "list")["releases"][0]["revision"] == 1


def test_the_verbs_their_history_and_delete(
    capsys: pytest.CaptureFixture[str], server: str, store: MemoryReleaseStore, files: Path
) -> None:
    assert gray(capsys, server, "create", "-f", str(files / "canary.yaml"))[0] == 0
    expected = [
        (["step", "canary", "--reason", "green"], "step: ", "running at 25% (revision 2)"),
        (["set-percent", "canary", "30"], "set-percent: ", "running at 30% (revision 3)"),
        (["pause", "canary"], "pause: ", "paused at 30% (revision 4)"),
        (["pause", "canary"], "pause: ", "paused at 30% (revision 4, unchanged)"),
        (["resume", "canary"], "resume: ", "running at 30% (revision 5)"),
        (["rollback", "canary", "--over", "2m"], "rollback: ", "rolled_back at 0% (revision 6)"),
    ]
    for argv, verb, line in expected:
        code, out, err = gray(capsys, server, *argv)
        assert (code, out) == (0, f"{verb}release canary {line}\n"), (argv, err)
    assert dict(store.audit[-1].figures) == {"over_s": 120.0}
    code, out, err = gray(capsys, server, "promote", "canary")
    assert code == 1 and "HTTP 409" in err and "is rolled_back" in err

    history = as_json(capsys, server, "history", "canary")["history"]
    assert [r["action"] for r in history] == [
        "create", "step", "set-percent", "pause", "resume", "rollback"
    ]  # fmt: skip
    code, out, _ = gray(capsys, server, "history", "canary", "--limit", "2")
    lines = out.splitlines()
    assert lines[0].split() == ["AT", "ACTION", "REVISION", "BY", "CHANGES", "WHY"]
    assert lines[1].split()[2:] == ["resume", "4->5", "sre", "state", "paused->running", "-"]
    assert lines[2].split()[2:7] == ["rollback", "5->6", "sre", "percent", "30.0->0.0,"]
    assert lines[2].endswith("over_s=120.0  -  ")

    code, out, err = gray(capsys, server, "delete", "canary", "--reason", "done")
    assert (code, out) == (0, "release canary deleted (it was at revision 6)\n"), err
    assert store.audit[-1].why == "done" and store.stored == {}
    code, out, err = gray(capsys, server, "status", "canary")
    assert code == 1 and "HTTP 404" in err and "no release named 'canary'" in err


def test_apply_dry_run_then_apply_and_a_stale_revision(
    capsys: pytest.CaptureFixture[str], server: str, store: MemoryReleaseStore, files: Path
) -> None:
    assert gray(capsys, server, "create", "-f", str(files / "canary.yaml"))[0] == 0
    faster = str(files / "faster.yaml")
    answer = as_json(capsys, server, "apply", "-f", faster, "--dry-run")
    assert answer["diff"] == {"percent": [10.0, 25.0]} and answer["moves"]["out_of"] == 0
    code, out, _ = gray(capsys, server, "apply", "-f", faster, "--dry-run")
    assert out.splitlines()[2].split() == ["FIELD", "BEFORE", "AFTER"]
    assert out.splitlines()[3].split() == ["percent", "10.0", "25.0"]
    assert len(store.audit) == 1

    code, out, err = gray(capsys, server, "apply", "-f", faster, "--revision", "1")
    assert (code, out) == (0, "applied: release canary running at 25% (revision 2)\n"), err
    code, out, err = gray(capsys, server, "set-percent", "canary", "5", "--revision", "1")
    assert code == 1 and "HTTP 409" in err and "at revision 2, not 1" in err, err
    code, out, err = gray(capsys, server, "set-percent", "canary", "5.001")
    assert code == 2 and "percent: granularity is 0.01" in err, err
    assert store.stored["canary"].release.percent == 25.0 and len(store.audit) == 2


def test_without_or_with_a_viewer_token_nothing_changes(
    capsys: pytest.CaptureFixture[str],
    server: str,
    store: MemoryReleaseStore,
    files: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMCTL_TOKEN", VIEWER)
    code, _, err = gray(capsys, server, "create", "-f", str(files / "canary.yaml"))
    assert code == 1 and "HTTP 403" in err
    assert gray(capsys, server, "list")[1] == "no releases\n"
    monkeypatch.delenv("IMCTL_TOKEN")
    code, _out, err = gray(capsys, server, "list")
    assert code == 1 and "HTTP 401" in err
    assert store.stored == {}
    code, _, err = gray(capsys, server, "set-percent", "canary", "5", "--revision", "0")
    assert code == 2 and "not a revision" in err
