"""Logs as SREs ship them: one JSON object a line when ``log_format: json``."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from control.common.errors import ConfigError
from control.common.logs import JsonLogFormatter
from control.settings import parse_settings


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("imctl.test", logging.WARNING, __file__, 7, msg, args, info)


def test_a_record_is_one_json_line() -> None:
    line = JsonLogFormatter().format(record("node %s: %d sessions\nclosed", "n0", 3))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning" and out["logger"] == "imctl.test"
    assert out["message"] == "node n0: 3 sessions\nclosed"
    assert out["time"].endswith("Z") and "T" in out["time"]


def test_an_exception_travels_in_its_own_field() -> None:
    out = json.loads(JsonLogFormatter().format(record("failed", exc=True)))
    assert out["message"] == "failed"
    assert out["exception"].startswith("Traceback") and "ValueError: boom" in out["exception"]


def test_log_format_is_checked() -> None:
    assert parse_settings({"log_format": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format"):
        parse_settings({"log_format": "xml"})
