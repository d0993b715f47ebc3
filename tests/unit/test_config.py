from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.cli import main
from control.common.errors import ConfigError
from control.settings import load_settings, parse_settings
from tests.geodb import write_geo_db

ROOT = Path(__file__).resolve().parents[2]


# Secrets of a deployment come from its environment, not from an example file.
REAL_SECRETS = {
    "IMCTL_TICKETS__KEYS__PROD1": "k" * 40,
    "IMCTL_ACCESS__INTERNAL_TOKEN": "i" * 40,
    "IMCTL_ADMIN__TOKENS": "[{name: sre, token: " + "s" * 40 + ", role: operator}]",
}


@pytest.mark.parametrize("name", ["local.yaml", "local-real.yaml", "production-example.yaml"])
def test_example_configs_are_valid(name: str) -> None:
    settings = load_settings(ROOT / "configs" / name, env=REAL_SECRETS)
    assert settings.regions.known


def test_every_problem_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
scheduler: {port: seventy, fallbacks: -1, trusted_proxies: [10.0.0.1/8], colour: red}
regions:
  known: [a, b]
  default: z
  cidrs: {"10.0.0.0/8": q, "nonsense": a}
  preference: {a: [a, c], x: [a]}
registry:
  static_nodes:
    - {id: n1, endpoint: "ws://h/1", region: a, capacity: 0}
    - {id: n1, endpoint: "http://h/2", region: nowhere}
tickets: {active_kid: k9, keys: {k1: short}}
gray:
  releases:
    - {name: r1, target: {pool: p}, percent: 150, include: {regions: [mars]}}
heartbeat: {interval_s: true}
"""
    )
    with pytest.raises(ConfigError) as err:
        load_settings(bad, env={})
    text = "\n".join(err.value.problems)
    expected = [
        "scheduler.port: expected an integer, got 'seventy'",
        "scheduler.fallbacks: must be >= 0",
        "scheduler.trusted_proxies[0]: bad CIDR",
        "scheduler.colour: unknown key",
        "regions.default: unknown region 'z'",
        "regions.cidrs.10.0.0.0/8: unknown region 'q'",
        "regions.cidrs.nonsense: bad CIDR",
        "regions.preference.a[1]: unknown region 'c'",
        "regions.preference.x: unknown region 'x'",
        "registry.static_nodes[0].capacity: must be >= 1",
        "registry.static_nodes[1].endpoint",
        "tickets.active_kid: 'k9' is not among keys",
        "tickets.keys.k1: secret must be at least 16",
        "gray.releases[0].percent: must be <= 100",
        "heartbeat.interval_s: expected a number, got True",
    ]
    for needle in expected:
        assert needle in text, f"missing {needle!r} in:\n{text}"
    assert all(p.startswith(str(bad)) for p in err.value.problems)


def test_environment_overrides_and_names_its_source() -> None:
    s = parse_settings({}, "f.yaml", {"IMCTL_SCHEDULER__PORT": "9999", "IMCTL_LOG_LEVEL": "debug"})
    assert s.scheduler.port == 9999 and s.log_level == "debug"
    with pytest.raises(ConfigError) as err:
        parse_settings({}, "f.yaml", {"IMCTL_SCHEDULER__PORT": "99999"})
    assert err.value.problems[0].startswith("IMCTL_SCHEDULER__PORT (environment): scheduler.port")


def test_open_admin_needs_loopback() -> None:
    with pytest.raises(ConfigError, match=r"admin\.tokens: required"):
        parse_settings({"scheduler": {"host": "0.0.0.0"}})
    parse_settings(
        {
            "scheduler": {"host": "0.0.0.0"},
            "admin": {"tokens": [{"name": "sre", "token": "x" * 40, "role": "operator"}]},
            "tickets": {"active_kid": "k", "keys": {"k": "y" * 40}},
            "access": {"internal_token": "z" * 40},
            # off loopback the built-in client key is refused too (tests/unit/test_auth.py)
            "client_auth": {"keys": {"app": "y" * 40}},
        }
    )


def test_tls_passthrough_needs_nodes_with_a_certificate() -> None:
    node = {"id": "n1", "region": "r", "port": 9100, "proxy_port": 9101}
    access = {"nodes": [node], "balancers": ["127.0.0.1/32"]}
    config = {"regions": {"known": ["r"]}, "access": access}
    with pytest.raises(ConfigError, match=r"edge\.tls: passthrough needs access\.tls"):
        parse_settings({**config, "edge": {"tls": "passthrough"}})
    parse_settings({**config, "edge": {"tls": "off"}})


@pytest.mark.parametrize(
    "text,needle",
    [
        ("scheduler: [1, 2", "not valid YAML"),
        ("- just\n- a list", "top level must be a mapping"),
        ("\x00binary", "not valid YAML"),
        ("a: " + "[" * 5000 + "]" * 5000, "nested too deeply"),  # RecursionError in PyYAML
        ("a: !!python/object:os.system x", "could not determine a constructor"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(f, env={})


def test_a_key_given_twice_is_a_problem_not_a_silent_override(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: an SRE merging two edits would lose one
    without a word. Every repeat is named with both lines, with the file's other problems."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "scheduler:\n  port: 8080\n"
        "tickets:\n  ttl_s: 60\n  ttl_s: 600\n"
        "scheduler:\n  port: 9090\n  fallbacks: 99\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert err.value.problems == [
        f"{f}: line 5, column 3: key 'ttl_s' given twice (first at line 4)",
        f"{f}: line 6, column 1: key 'scheduler' given twice (first at line 1)",
        f"{f}: scheduler.fallbacks: must be <= 8, got 99",
    ], err.value.problems


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(ROOT / "configs" / "local.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler: {port: x}\nbogus: 1\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "scheduler.port" in err and "bogus: unknown key" in err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_config_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "-o", "json", str(ROOT / "configs" / "local.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["problems"] == [] and out["backend"] == "embedded"
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler: {port: x}\nbogus: 1\n")
    assert main(["config", "check", "--output", "json", str(bad)]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["problems"]) == 2
    assert any("scheduler.port" in p for p in out["problems"])


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["nodes", "--output", "xml"],
        ["config"],
        ["config", "check", "-o", "yaml", "f.yaml"],
        ["scheduler"],
        ["nodes", "--server", "notaurl"],
        ["nodes", "--server", "http://h:99999"],
        ["presence", "who", ""],
        ["presence", "events", "--count", "0"],
        ["explain", "--uid", "alice", "--platform", "ios"],
        ["presence", "events", "--count", "\u00b2"],
        ["presence", "events", "--uid", "a b"],
        ["connect", "--uid", "bad uid"],
        ["access", "drain", "n1", "--over", "soon"],
        [],
    ],
)
def test_cli_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "imctl" in capsys.readouterr().err


def test_environment_value_nested_too_deeply_is_a_type_problem() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({}, "t.yaml", env={"IMCTL_SCHEDULER__PORT": "[" * 5000 + "]" * 5000})
    assert err.value.problems[0].startswith(
        "IMCTL_SCHEDULER__PORT (environment): scheduler.port: expected an integer"
    )


def test_platform_names_are_checked() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"access": {"platforms": ["ios", "Bad Name", "other"]}}, "t.yaml")
    assert err.value.problems == [
        "t.yaml: access.platforms[1]: bad platform name 'Bad Name'",
        "t.yaml: access.platforms[2]: bad platform name 'other'",
    ]


def test_cli_bad_server_in_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMCTL_SERVER", "ftp://h")
    with pytest.raises(SystemExit) as exit_:
        main(["nodes"])
    assert exit_.value.code == 2
    assert "IMCTL_SERVER: 'ftp://h' is not a scheduler URL" in capsys.readouterr().err


def test_geoip_problems_all_at_once(tmp_path: Path) -> None:
    (tmp_path / "garbage.mmdb").write_bytes(b"no database here" * 64)

    def problems(geoip: dict) -> list[str]:  # type: ignore[type-arg]
        with pytest.raises(ConfigError) as err:
            parse_settings({"regions": {"known": ["a", "b"], "geoip": geoip}}, "t.yaml")
        return err.value.problems

    found = problems(
        {
            "database": str(tmp_path / "garbage.mmdb"),
            "places": {"CN": "a", "cn-gd": "b", "continent:EU": "mars", "USA": "a"},
            "reload_s": 0,
        }
    )
    text = "\n".join(found)
    assert "regions.geoip.database: cannot open MaxMind DB" in text and "garbage.mmdb" in text
    assert "regions.geoip.places.cn-gd: expected a place like CN, CN-GD or continent:EU" in text
    assert "regions.geoip.places.USA: expected a place" in text
    assert "regions.geoip.places.continent:EU: unknown region 'mars'" in text
    assert "regions.geoip.reload_s: must be > 0" in text
    assert all(p.startswith("t.yaml: ") for p in found)
    assert problems({"database": str(tmp_path / "nowhere.mmdb"), "places": {"CN": "a"}}) == [
        "t.yaml: regions.geoip.database: cannot open MaxMind DB "
        f"{tmp_path / 'nowhere.mmdb'}: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'nowhere.mmdb'}'"
    ]
    assert problems({"places": {"CN": "a"}}) == [
        "t.yaml: regions.geoip.database: required when places are given"
    ]


def test_geoip_database_needs_places(tmp_path: Path) -> None:
    db = write_geo_db(tmp_path / "city.mmdb")
    with pytest.raises(ConfigError) as err:
        parse_settings({"regions": {"geoip": {"database": str(db)}}}, "t.yaml")
    assert err.value.problems == [
        "t.yaml: regions.geoip.places: empty, so the database would place no client"
    ]
    ok = parse_settings(
        {"regions": {"known": ["a"], "geoip": {"database": str(db), "places": {"CN": "a"}}}}
    )
    assert ok.regions.geoip.database == str(db)
