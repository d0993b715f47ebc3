"""The status cluster's records: the ring spec, the mover's control and progress, seeding."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from control.common.errors import BadRequest
from control.common.kv.embedded import EmbeddedKV
from control.common.records import dump_json
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import (
    MOVER_CONTROLS,
    MOVER_PROGRESS,
    MoverControl,
    MoverProgress,
    RingStore,
    parse_ring,
)


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


SPEC = RingSpec(1, (ShardSpec("s0", "embedded:s0"), ShardSpec("s1", "embedded:s1", 2)))


def test_records_read_back_as_written() -> None:
    migrating = RingSpec(
        2, (*SPEC.shards, ShardSpec("s2", "embedded:s2")), SPEC.shards, "migrating", 40
    )
    for spec in (SPEC, migrating):
        assert parse_ring(dump_json(spec)) == spec
    progress = MoverProgress(2, 10, 100, 5.0, 1, {"s0": "17"}, "moving", 1.5, "c1")
    assert MOVER_PROGRESS.parse(dump_json(progress), "p") == progress
    assert progress.remaining == 90 and progress.eta_s == 18.0
    control = MoverControl(True, 10.0)
    assert MOVER_CONTROLS.parse(dump_json(control), "m") == control


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"nope", "not JSON"),
        (b"{}", "ring.version: required"),
        (b'{"version": 0, "shards": []}', "ring.version: must be >= 1"),
        (b'{"version": 1, "shards": [{"id": "s", "weight": 0}]}', "weight: must be >= 1"),
        (b'{"version": 1, "shards": [{"id": "s"}, {"id": "s"}]}', "shards: shard ids repeat"),
        (b'{"version": 1, "shards": [{"id": "s"}], "previous": [{"id": "t"}]}', "only while"),
        (b'{"version": 1, "shards": [{"id": "s"}], "state": "x"}', "ring.state"),
        (b'{"version": 1, "shards": [{"id": "s"}], "extra": 1}', "unknown key"),
    ],
)
def test_a_bad_ring_spec_is_refused_naming_what(raw: bytes, expected: str) -> None:
    with pytest.raises(BadRequest, match=expected):
        parse_ring(raw)


async def test_seed_once_then_the_store_wins(
    kv: EmbeddedKV, caplog: pytest.LogCaptureFixture
) -> None:
    store = RingStore(kv, "/t")
    assert await store.seed(SPEC) == SPEC
    other = RingSpec(1, (ShardSpec("x", "embedded:x"),))
    with caplog.at_level(logging.WARNING):
        assert await store.seed(other) == SPEC
    assert "differs from the config" in caplog.text
    stored = await store.ring()
    assert stored is not None and stored.record == SPEC


async def test_an_unreadable_ring_is_never_overwritten(kv: EmbeddedKV) -> None:
    store = RingStore(kv, "/t")
    await kv.put("/t/presence/ring", b"hand-written")
    with pytest.raises(BadRequest, match="is not a ring spec"):
        await store.seed(SPEC)
    entry = await kv.get("/t/presence/ring")
    assert entry is not None and entry.value == b"hand-written"


async def test_control_defaults_until_set_and_progress_absent_until_written(kv: EmbeddedKV) -> None:
    store = RingStore(kv, "/t")
    assert await store.control() == MoverControl()
    assert await store.read_progress() is None
    await store.set_control(MoverControl(paused=True))
    assert (await store.control()).paused
    await store.write_progress(MoverProgress(3))
    assert await store.read_progress() == MoverProgress(3)
