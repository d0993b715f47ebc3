"""No secret left at its default: built-in, placeholder and short secrets are refused by
``config check`` and at start unless every listener is on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control.cli import main
from control.common.errors import ConfigError
from control.common.secrets import BUILT_IN, weakness
from control.settings import Settings, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
STRONG = "Zq7" + "x" * 37
ADMIN = [{"name": "sre", "token": STRONG + "a", "role": "operator"}]


def exposed(**sections: Any) -> dict[str, Any]:
    """A config whose scheduler listens beyond loopback, every secret strong unless given."""
    data: dict[str, Any] = {
        "scheduler": {"host": "0.0.0.0"},
        "admin": {"tokens": ADMIN},
        "tickets": {"active_kid": "k", "keys": {"k": STRONG}},
        "access": {"internal_token": STRONG + "b"},
        "client_auth": {"keys": {"app": STRONG + "c"}},
    }
    for key, value in sections.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(data, "c.yaml", {})
    return err.value.problems


def test_strong_secrets_pass_off_loopback() -> None:
    assert isinstance(parse_settings(exposed(), "c.yaml", {}), Settings)


@pytest.mark.parametrize(
    "sections,key",
    [
        ({"tickets": None}, "tickets.keys.k1"),  # the built-in ticket key
        ({"access": {}}, "access.internal_token"),  # the built-in internal token
        (
            {
                "tickets": {
                    "active_kid": "k",
                    "keys": {"k": "replace-me-with-a-real-key-0123456789"},
                }
            },
            "tickets.keys.k",
        ),
        ({"access": {"internal_token": "short-but-16-chars"}}, "access.internal_token"),
        (
            {"client_auth": {"keys": {"app": "placeholder-" + "k" * 30}}},
            "client_auth.keys.app",
        ),
        (
            {"admin": {"tokens": [{"name": "g", "token": "CHANGEME" + "q" * 30}]}},
            "admin.tokens[0].token",
        ),
    ],
)
def test_weak_secret_refused_off_loopback(sections: dict[str, Any], key: str) -> None:
    found = problems(exposed(**sections))
    assert any(p.startswith(f"c.yaml: {key}: ") for p in found), found
    assert all("scheduler.host is 0.0.0.0" in p for p in found if key in p)


def test_access_node_off_loopback_counts_as_exposed() -> None:
    data = exposed(
        scheduler={"host": "127.0.0.1"},
        access={"nodes": [{"id": "n1", "region": "local", "host": "10.1.2.3"}]},
    )
    found = problems(data)
    assert any("access.internal_token: is a secret built into imctl" in p for p in found), found
    assert any("access.nodes[0].host is 10.1.2.3" in p for p in found), found


def test_loopback_cluster_may_use_the_development_secrets() -> None:
    settings = load_settings(ROOT / "configs" / "local.yaml", env={})
    assert all(weakness(secret) for _key, secret in settings.secrets())


def test_the_message_never_quotes_the_secret() -> None:
    secret = "replace-me-" + "p" * 30
    found = problems(exposed(access={"internal_token": secret}))
    assert found and not any(secret in p for p in found)


def test_production_example_is_refused_until_its_secrets_are_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = ROOT / "configs" / "production-example.yaml"
    assert main(["config", "check", str(path), "--output", "json"]) == 2
    report = json.loads(capsys.readouterr().out)
    text = "\n".join(report["problems"])
    for key in ("tickets.keys.prod1", "access.internal_token", "admin.tokens[0].token"):
        assert f"{key}: is a placeholder" in text, text


def test_weakness_rules() -> None:
    assert weakness(STRONG) is None
    assert weakness("a" * 31) == "is 31 bytes; at least 32 are needed"
    for secret in BUILT_IN:
        assert weakness(secret) == "is a secret built into imctl (public)"
    assert weakness("x" * 40 + "Example") is not None


def test_public_keys_are_not_secrets() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()  # 178 bytes, none of them secret: not held to the secret rules
    settings = parse_settings(exposed(client_auth={"keys": {"app": pem}}), "c.yaml", {})
    assert "client_auth.keys.app" not in dict(settings.secrets())
    settings = parse_settings(exposed(), "c.yaml", {})
    assert "client_auth.keys.app" in dict(settings.secrets())


def test_metrics_viewer_needs_admin_tokens() -> None:
    found = problems({"admin": {"metrics": "viewer"}})
    assert any("admin.metrics: viewer needs admin.tokens" in p for p in found), found
