"""Records read back from the store parse or fail with the error their readers handle."""

from __future__ import annotations

import json

import pytest

from control.common.errors import BadRequest
from control.common.registry import NodeRecord
from control.gray.store import release_from_json

DEEP = b"[" * 30_000 + b"]" * 30_000  # json.loads raises RecursionError on this


GOOD = {"id": "n1", "endpoint": "ws://h/ws", "region": "north"}


def record(**over: object) -> bytes:
    return json.dumps({**GOOD, **over}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        DEEP,
        b"{",
        b"[]",
        b'{"id": "n1"}',
        record(zone=None),  # would break the zone sort of every snapshot build
        record(pool=7),
        record(version=2),
        record(internal=["x"]),
        record(weight=float("nan")),
        record(weight=True),
        record(reported_at="yesterday"),
        record(capacity=-1),
        record(state="sleeping"),
    ],
)
def test_bad_node_records_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"node record|Expecting|nested"):
        NodeRecord.from_json(raw)


@pytest.mark.parametrize("raw", [DEEP, b"{", b"[]"])
def test_bad_releases_raise_bad_request(raw: bytes) -> None:
    with pytest.raises(BadRequest) as err:
        release_from_json(raw, "gray/r1")
    assert err.value.field == "gray/r1"


def test_good_node_record_round_trips() -> None:
    record = NodeRecord(id="n1", endpoint="ws://h/ws", region="north", capacity=10)
    assert NodeRecord.from_json(record.to_json()) == record
