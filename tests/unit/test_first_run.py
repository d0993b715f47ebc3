"""What a new user meets on a first run, piece by piece: config problems all at once, the
CLI's errors and ``--output json`` on every verb, readable counts, and a banner whose
commands work as printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from control import cli
from control.cli.admin_client import AdminClient
from control.cli.client import Output
from control.common.errors import ConfigError
from control.launch import banner, imctl_command
from control.settings import load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "scheduler:\n  port: x\n  port: 8081\n",
            ["line 3, column 3: key 'port' given twice", "scheduler.port: expected an integer"],
        ),
        (
            "scheduler:\n  fallbacks: 99\nlog_level: loud\nscheduler:\n  port: 8081\n",
            [
                "line 4, column 1: key 'scheduler' given twice",
                "log_level: expected one of",
                "scheduler.fallbacks: must be <= 8, got 99",
            ],
        ),
        (
            "scheduler:\n  port: x\n  port: y\n  port: 8081\n",
            ["got 'x'", "got 'y'", "line 3, column 3", "line 4, column 3"],
        ),
    ],
)
def test_a_repeated_key_and_a_bad_value_are_both_reported(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    """PyYAML keeps the last of a repeated key: the value it hides is checked too, so a
    bad one is reported with the repeat instead of after the repeat is fixed."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    problems = "\n".join(err.value.problems)
    for needle in expected:
        assert needle in problems, problems
    assert len(err.value.problems) == len(set(err.value.problems))


def test_usage_errors_name_imctl_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["connect", "--uid", "alice", "--bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "imctl: unrecognized arguments: --bogus" in err, err
    assert "imctl: imctl" not in err
    with pytest.raises(SystemExit):
        cli.main(["connect", "--uid", "bad uid"])
    err = capsys.readouterr().err
    assert "\nimctl connect: argument --uid: 'bad uid' is not a uid" in err, err
    assert "imctl: imctl" not in err


VERBS = [
    ["up"],
    ["scheduler", "--config", "x.yaml"],
    ["access", "--config", "x.yaml", "--node-id", "n1"],
    ["access", "drain", "n1"],
    ["access", "undrain", "n1"],
    ["controller", "--config", "x.yaml"],
    ["nodes"],
    ["presence", "who", "alice"],
    ["presence", "count"],
    ["presence", "events"],
    ["explain", "--uid", "alice", "--platform", "ios", "--version", "1.0.0"],
    ["connect", "--uid", "alice"],
    ["config", "check", "x.yaml"],
    ["gray", "create", "-f", "r.yaml", "--dry-run"],
    ["gray", "apply", "-f", "r.yaml"],
    ["gray", "list"],
    ["gray", "status", "canary"],
    ["gray", "set-percent", "canary", "25"],
    ["gray", "step", "canary"],
    ["gray", "pause", "canary"],
    ["gray", "resume", "canary"],
    ["gray", "promote", "canary"],
    ["gray", "rollback", "canary", "--over", "30s"],
    ["gray", "history", "canary"],
    ["gray", "delete", "canary"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v[:2]))
def test_every_verb_takes_output_json(verb: list[str]) -> None:
    args = cli.build_parser().parse_args([*verb, "--output", "json"])
    assert args.output == "json"


def test_connect_json_output_is_frames_only(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output("json")
    out.note("scheduler: node north-1")
    out.frame({"t": "welcome", "conn": "c1"})
    out.sent('{"t":"echo","body":"hi"}')
    out.frame({"t": "echo", "body": "hi"})
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"t": "welcome", "conn": "c1"},
        {"t": "echo", "body": "hi"},
    ]
    assert captured.err == "# scheduler: node north-1\n"


def test_count_by_platform_names_the_unnamed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"total": 3, "by": "platform", "counts": {"": 2, "ios": 1}}

    def admin(client: AdminClient, path: str, *rest: Any) -> Any:
        assert path == "/v1/presence/count?by=platform"
        return answer

    monkeypatch.setattr(AdminClient, "get", admin)
    assert cli.main(["presence", "count", "--by", "platform", "--server", "http://x:1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["PLATFORM", "ONLINE"]
    assert rows[1].split() == ["(none)", "2"] and rows[2].split() == ["ios", "1"]
    assert all(line.strip() for line in rows[:3])


def test_banner_commands_work_as_printed() -> None:
    settings = load_settings(ROOT / "configs" / "local.yaml", env={})
    text = banner(settings, imctl=".venv/bin/imctl")
    assert "?ticket=<ticket>&platform=ios" in text
    assert ".venv/bin/imctl nodes --server http://127.0.0.1:8080" in text
    assert "imctl connect --uid alice" in text
    assert "not on PATH" in text and "export PATH=" in text
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in text  # PATH entries must be absolute
    plain = banner(settings, imctl="imctl")
    assert "not on PATH" not in plain and "  operate:    imctl nodes --server" in plain


def test_banner_says_how_to_pass_the_token() -> None:
    settings = parse_settings(
        {
            "admin": {
                "tokens": [
                    {"name": "sre", "token": "s" * 24, "role": "operator"},
                    {"name": "dash", "token": "d" * 24, "role": "viewer"},
                ]
            }
        },
        env={},
    )
    text = banner(settings, imctl="imctl")
    assert "IMCTL_TOKEN" in text and "--token" in text
    assert "sre (operator)" in text and "dash (viewer)" in text
    assert "s" * 24 not in text  # names the tokens, never prints them
    assert "open, no token" not in text


def test_imctl_command_when_not_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "imctl").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert imctl_command(cwd=tmp_path) == ".venv/bin/imctl"
    assert imctl_command(cwd=tmp_path / "elsewhere") == str(venv_bin / "imctl")
    (venv_bin / "imctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin")
    assert imctl_command(cwd=tmp_path) == "imctl"
