"""DrainRequest: only the admin API's whole record is a drain request."""

from __future__ import annotations

import json

import pytest

from control.common.registry import DrainRequest, NodeRecord


def test_the_admin_apis_record_parses_and_round_trips() -> None:
    raw = json.dumps({"over_s": 60.0, "at": 1700000000.5, "by": "ops"}).encode()
    request = DrainRequest.from_json(raw)
    assert request == DrainRequest(60.0, 1700000000.5, "ops")
    assert DrainRequest.from_json(request.to_json()) == request
    # A newer writer's extra field changes nothing: the same request.
    extra = json.dumps({"over_s": 60, "at": 1700000000.5, "by": "ops", "note": "x"}).encode()
    assert DrainRequest.from_json(extra) == request


def test_a_node_record_is_not_a_drain_request() -> None:
    record = NodeRecord(id="n0", endpoint="ws://n0/ws", region="north", state="draining")
    with pytest.raises(ValueError, match="missing over_s, at, by"):
        DrainRequest.from_json(record.to_json())


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "JSON object"),
        (b"[" * 100_000, "nested too deep"),
        (b"{}", "missing over_s, at, by"),
        (b'{"over_s": 5}', "missing at, by"),
        (b'{"over_s": "soon", "at": 1, "by": "x"}', "over_s"),
        (b'{"over_s": -5, "at": 1, "by": "x"}', "over_s"),
        (b'{"over_s": true, "at": 1, "by": "x"}', "over_s"),
        (b'{"over_s": 1e12, "at": 1, "by": "x"}', "over_s"),
        (b'{"over_s": NaN, "at": 1, "by": "x"}', "over_s"),
        (b'{"over_s": 5, "at": "now", "by": "x"}', "at must be"),
        (b'{"over_s": 5, "at": -1, "by": "x"}', "at must be"),
        (b'{"over_s": 5, "at": Infinity, "by": "x"}', "at must be"),
        (b'{"over_s": 5, "at": 1, "by": 7}', "by must be"),
    ],
)
def test_anything_else_is_refused_with_the_reason(value: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        DrainRequest.from_json(value)
