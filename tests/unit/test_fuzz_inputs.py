"""Whatever arrives from outside — a query string, a config document — ends in a value or
in the error that names what is wrong, never in another exception (which would be a 500
or a traceback)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from control.access.app import query_params as _query
from control.common.errors import BadRequest, ConfigError
from control.common.schema import describe
from control.scheduler.request import parse_endpoint_query
from control.settings import Settings, parse_settings

NAMES = ["uid", "device", "platform", "version", "region", "ticket", "x", "%75id"]
VALUES = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["alice", "1.2.3", "ios", "north", "%ff", "%", "+", "a=b", "", "9" * 200]
)


@st.composite
def query_strings(draw: Any) -> str:
    parts = draw(
        st.lists(st.tuples(st.sampled_from(NAMES) | st.text(max_size=5), VALUES), max_size=8)
    )
    sep = draw(st.sampled_from(["&", "&&", ";"]))
    return sep.join(f"{k}={v}" if draw(st.booleans()) else k for k, v in parts)


@given(query_strings())
def test_endpoint_query_parses_or_names_a_field(raw: str) -> None:
    try:
        q = parse_endpoint_query(raw, {"north", "south"})
    except BadRequest as exc:
        assert exc.field in {"uid", "device", "platform", "version", "region"}
    else:
        assert q.uid and q.device and q.platform


def test_endpoint_query_takes_ascii_names_only() -> None:
    ok = "uid=a&device=d&version=1.2.3"
    assert parse_endpoint_query(ok + "&platform=IOS", set()).platform == "ios"
    # The Kelvin sign lowers to a plain "k"; an Arabic-Indic digit reads as a version digit.
    for bad, field in (
        ("uid=a&device=d&version=1.2.3&platform=\u212a", "platform"),
        ("uid=a&device=d&platform=ios&version=\u0661.2.3", "version"),
    ):
        try:
            parse_endpoint_query(bad, set())
        except BadRequest as exc:
            assert exc.field == field
        else:
            raise AssertionError(f"{bad!r} was taken")


@given(query_strings())
def test_ws_query_never_raises(raw: str) -> None:
    assert isinstance(_query(raw), dict)


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
SECTIONS = [
    "cluster",
    "registry",
    "scheduler",
    "heartbeat",
    "backoff",
    "tickets",
    "regions",
    "gray",
    "admin",
    "access",
    "presence",
    "controller",
    "log_level",
]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(SECTIONS), DOCS, max_size=5))
def test_any_config_document_is_settings_or_a_config_error(doc: dict[str, Any]) -> None:
    try:
        parse_settings(doc, "fuzz.yaml", env={})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml: ") for p in exc.problems)


# Every real key path, so values reach the converters and checks behind the key names.
KEY_PATHS = [path for path, _default, _doc in describe(Settings)]


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    node = doc
    for key in heads:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            return
        node = nxt
    node[last] = value


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEY_PATHS), DOCS), min_size=1, max_size=6))
def test_odd_values_under_real_keys_are_config_errors(assignments: list[tuple[str, Any]]) -> None:
    doc: dict[str, Any] = {}
    for path, value in assignments:
        _put(doc, path, value)
    try:
        parse_settings(doc, "fuzz.yaml", env={})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml: ") for p in exc.problems)
