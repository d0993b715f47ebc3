"""Every record kept under a key prefix: serializing is the exact inverse of parsing, and a
field added to a record can never be silently dropped on save."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.common.election import LEADERS, Leader
from control.common.keys import Keys
from control.common.records import RecordType
from control.common.registry import DRAIN_REQUESTS, NODE_RECORDS, DrainRequest, NodeRecord
from control.gray.audit import ACTION_PATTERN, AUDITS, AuditRecord
from control.gray.model import NAME_PATTERN, Exclude, Include, Release, Target, VersionRange
from control.gray.stable import STABLES, Stable
from control.gray.store import RELEASES
from control.presence.ring import MAX_WEIGHT, SHARD_ID_PATTERN, RingSpec, ShardSpec
from control.presence.ringstore import (
    MOVER_CONTROLS,
    MOVER_PROGRESS,
    RING_SPECS,
    MoverControl,
    MoverProgress,
)

TEXT = st.text(max_size=12)
NAMES = st.text(alphabet="abcdefghij0123456789-_.", min_size=1, max_size=8)
COUNTS = st.integers(min_value=0, max_value=10**9)
NUMBERS = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
PERCENTS = st.integers(min_value=0, max_value=10_000).map(lambda b: b / 100)
SHARDS = st.lists(
    st.builds(
        ShardSpec,
        id=st.from_regex(SHARD_ID_PATTERN, fullmatch=True),
        url=st.one_of(
            st.just(""),
            NAMES.map(lambda n: f"embedded:{n}"),
            NAMES.map(lambda n: f"redis://{n}:6379/0"),
        ),
        weight=st.integers(min_value=1, max_value=MAX_WEIGHT),
    ),
    max_size=4,
    unique_by=(lambda s: s.id, lambda s: s.url or s.id),
).map(tuple)
# Plain JSON data: what an audit record's changes and figures hold.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
RANGES = st.sampled_from([">=5.2,<6", "<5", "==6.1", "!=1.0.0.1", "7"]).map(VersionRange.parse)

# Each record type with a strategy for EVERY field (test_strategies_vary_every_field holds
# them to that, so a new field gets into the round trip below).
FIELDS: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    NodeRecord: {
        "id": NAMES,
        "endpoint": NAMES.map(lambda n: f"ws://{n}/ws"),
        "region": NAMES,
        "zone": TEXT,
        "pool": TEXT,
        "version": TEXT,
        "capacity": COUNTS,
        "conns": COUNTS,
        "state": st.sampled_from(["up", "draining"]),
        "epoch": COUNTS,
        "weight": NUMBERS,
        "reported_at": NUMBERS,
        "internal": TEXT,
        "proxy": TEXT,
    },
    DrainRequest: {
        "over_s": st.floats(min_value=0, max_value=86_400, allow_nan=False),
        "at": NUMBERS,
        "by": TEXT,
    },
    Leader: {"identity": TEXT},
    Release: {
        "name": st.from_regex(NAME_PATTERN, fullmatch=True),
        "target": st.one_of(
            NAMES.map(lambda p: Target(pool=p)), NAMES.map(lambda v: Target(version=v))
        ),
        "percent": PERCENTS,
        "include": st.builds(
            Include,
            uids=st.lists(TEXT, max_size=3).map(tuple),
            regions=st.lists(NAMES, max_size=2).map(tuple),
            platforms=st.lists(NAMES, max_size=2).map(tuple),
            app_versions=st.lists(RANGES, max_size=2).map(tuple),
        ),
        "exclude": st.builds(Exclude, uids=st.lists(TEXT, max_size=3).map(tuple)),
        "salt": TEXT,
        "steps": st.lists(PERCENTS, max_size=4).map(lambda s: tuple(sorted(s))),
        "step_interval_s": st.floats(min_value=0.5, max_value=1e6, allow_nan=False),
        "analysis": st.dictionaries(NAMES, st.integers() | TEXT, max_size=3),
        "state": st.sampled_from(["draft", "running", "paused", "promoted", "rolled_back"]),
        "rollback_over_s": st.floats(min_value=0, max_value=86_400, allow_nan=False),
    },
    Stable: {
        "target": st.one_of(
            NAMES.map(lambda p: Target(pool=p)), NAMES.map(lambda v: Target(version=v))
        ),
        "release": st.from_regex(NAME_PATTERN, fullmatch=True),
        "release_revision": st.integers(min_value=1, max_value=10**12),
        "previous": st.one_of(
            st.just({}), NAMES.map(lambda p: {"pool": p}), NAMES.map(lambda v: {"version": v})
        ),
        "previous_revision": COUNTS,
        "at": NUMBERS,
        "by": TEXT,
        "why": TEXT,
    },
    AuditRecord: {
        "release": st.from_regex(NAME_PATTERN, fullmatch=True),
        "action": st.from_regex(ACTION_PATTERN, fullmatch=True),
        "revision": COUNTS,
        "from_revision": COUNTS,
        "at": NUMBERS,
        "by": TEXT,
        "why": TEXT,
        "changes": st.dictionaries(NAMES, st.tuples(JSON, JSON), max_size=4),
        "figures": st.dictionaries(NAMES, JSON, max_size=4),
    },
    RingSpec: {
        "version": st.integers(min_value=1, max_value=10**9),
        "shards": SHARDS.filter(bool),
        "previous": SHARDS,
        "state": st.sampled_from(["stable", "migrating"]),
        "vnodes": st.integers(min_value=1, max_value=10_000),
    },
    MoverControl: {
        "paused": st.booleans(),
        "throttle_per_s": st.floats(min_value=0.001, max_value=10_000_000, allow_nan=False),
    },
    MoverProgress: {
        "version": st.integers(min_value=1, max_value=10**9),
        "moved": COUNTS,
        "expected": COUNTS,
        "rate_per_s": NUMBERS,
        "passes": COUNTS,
        "cursors": st.dictionaries(NAMES, TEXT, max_size=3),
        "state": st.sampled_from(["moving", "paused", "stable"]),
        "updated_at": NUMBERS,
        "by": TEXT,
    },
}
TYPES: list[tuple[type, RecordType[Any]]] = [
    (NodeRecord, NODE_RECORDS),
    (DrainRequest, DRAIN_REQUESTS),
    (Leader, LEADERS),
    (Release, RELEASES),
    (AuditRecord, AUDITS),
    (Stable, STABLES),
    (RingSpec, RING_SPECS),
    (MoverControl, MOVER_CONTROLS),
    (MoverProgress, MOVER_PROGRESS),
]
JSON_TYPES = [(cls, rtype) for cls, rtype in TYPES if cls is not Leader]  # Leader: plain text


def records(cls: type) -> st.SearchStrategy[Any]:
    """Valid records only: those a type checks as a whole (``problems()``, a ring's
    ``previous`` only while migrating) are drawn until they pass."""
    return st.builds(cls, **FIELDS[cls]).filter(lambda r: not getattr(r, "problems", list)())


@pytest.mark.parametrize(("cls", "rtype"), TYPES, ids=lambda v: getattr(v, "__name__", ""))
def test_strategies_vary_every_field(cls: type, rtype: RecordType[Any]) -> None:
    """A field added to a record must be added here, which puts it in the round trip."""
    assert set(FIELDS[cls]) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("cls", "rtype"), TYPES, ids=lambda v: getattr(v, "__name__", ""))
@given(data=st.data())
def test_parse_is_the_inverse_of_serialize(
    cls: type, rtype: RecordType[Any], data: st.DataObject
) -> None:
    record = data.draw(records(cls))
    raw = rtype.serialize(record)
    assert rtype.parse(raw, "/imctl/x/y") == record
    assert rtype.serialize(rtype.parse(raw, "/imctl/x/y")) == raw  # stable bytes


@pytest.mark.parametrize(("cls", "rtype"), JSON_TYPES, ids=lambda v: getattr(v, "__name__", ""))
@given(data=st.data())
def test_every_field_is_serialized(cls: type, rtype: RecordType[Any], data: st.DataObject) -> None:
    record = data.draw(records(cls))
    stored = json.loads(rtype.serialize(record))
    assert set(stored) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(("cls", "rtype"), JSON_TYPES, ids=lambda v: getattr(v, "__name__", ""))
@given(data=st.data())
def test_a_field_added_to_a_record_is_saved(
    cls: type, rtype: RecordType[Any], data: st.DataObject
) -> None:
    """The serializer reads the record's fields, not a list of names someone keeps: a
    record type grown by a field writes it without any change to the serializer."""
    record = data.draw(records(cls))
    grown = dataclasses.make_dataclass(
        f"Grown{cls.__name__}",
        [("added", str, dataclasses.field(default=""))],
        bases=(cls,),
        frozen=True,
    )
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(cls)}
    stored = json.loads(rtype.serialize(grown(**values, added="new")))
    assert stored["added"] == "new"
    assert {k: v for k, v in stored.items() if k != "added"} == json.loads(rtype.serialize(record))


def test_key_layout() -> None:
    keys = Keys("/imctl/")
    assert keys.node("n1") == "/imctl/nodes/n1"
    assert keys.drain("n1") == "/imctl/drain/n1"
    assert keys.release("r1") == "/imctl/gray/r1"
    assert keys.leader == "/imctl/controller/leader"
    assert keys.ring == "/imctl/presence/ring"
    assert all(d.endswith("/") for d in (keys.nodes, keys.drains, keys.gray))


def test_audit_keys_sort_by_revision_apart_from_the_releases() -> None:
    keys = Keys("/imctl")
    assert keys.audit("r1", 42) == "/imctl/gray-audit/r1/00000000000000000042"
    assert keys.audit("r1", 9) < keys.audit("r1", 10) < keys.audit("r1", 2**63 - 1)
    assert keys.audit("r1", 1).startswith(keys.release_audit("r1"))
    assert not keys.audit("r1-b", 1).startswith(keys.release_audit("r1"))
    assert not keys.audit("r1", 1).startswith(keys.gray)


def test_numbers_stay_numbers() -> None:
    """JSON keeps a float's exact value (the round trip above relies on it)."""
    record = NodeRecord(id="n", endpoint="e", region="r", weight=0.1 + 0.2, reported_at=math.pi)
    assert NodeRecord.from_json(NODE_RECORDS.serialize(record)) == record
