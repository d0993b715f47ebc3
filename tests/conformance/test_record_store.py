"""The typed record store over both backends: get / list / cas / delete / mirror, and an
unreadable value skipped (warned once per value) without hiding the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.records import RecordStore
from control.common.registry import DrainRequest, drain_requests, request_drain
from control.gray.model import Release, Target
from control.gray.store import RELEASES


async def wait_for(predicate, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_cas_get_list_delete(kv: KeyValueStore, prefix: str) -> None:
    store = RecordStore(kv, Keys(prefix).gray, RELEASES)
    r1 = Release(name="r1", target=Target(pool="canary"), percent=5)
    assert await store.get("r1") is None
    ok, rev = await store.cas(r1, 0)
    assert ok
    stored = await store.get("r1")
    assert stored is not None and (stored.record, stored.revision) == (r1, rev)
    # A stale writer loses and learns the current revision.
    again, current = await store.cas(Release(name="r1", target=Target(pool="x")), 0)
    assert (again, current) == (False, rev)
    ok, rev2 = await store.cas(Release(name="r1", target=Target(pool="canary"), percent=10), rev)
    assert ok and rev2 > rev
    await store.cas(Release(name="r2", target=Target(version="2")), 0)
    found, _ = await store.list()
    assert sorted(found) == ["r1", "r2"] and found["r1"].percent == 10
    assert await store.delete("r1", expected=rev) is False  # not at that revision any more
    assert await store.delete("r1", expected=rev2) is True
    assert sorted((await store.list())[0]) == ["r2"]


async def test_unreadable_values_are_skipped_and_warned_once(
    kv: KeyValueStore, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(kv, Keys(prefix).gray, RELEASES)
    await store.cas(Release(name="good", target=Target(pool="p")), 0)
    await kv.put(store.key("broken"), b"{not json")
    await kv.put(
        store.key("elsewhere"), RELEASES.serialize(Release(name="x", target=Target(pool="p")))
    )
    with caplog.at_level(logging.WARNING, logger="control.common.records"):
        for _ in range(3):
            found, _ = await store.list()
            assert sorted(found) == ["good"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned  # one per bad value, not one per listing
    assert any(f"value at {store.key('broken')}: not a release" in w for w in warned)
    assert any(f"value at {store.key('elsewhere')}: a release that names 'x'" in w for w in warned)
    stored = await store.get("broken")
    assert stored is not None and stored.record is None and stored.revision > 0


async def test_a_drain_mirror_sees_only_its_own_request(kv: KeyValueStore, prefix: str) -> None:
    views: list[Mapping[str, DrainRequest]] = []
    mirror = drain_requests(kv, prefix).mirror(views.append, verify_s=0.5, only="n1")
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        await asyncio.wait_for(mirror.synced.wait(), 5)
        await request_drain(kv, prefix, "n2", 30, "ops")
        wanted = await request_drain(kv, prefix, "n1", 60, "ops")
        await wait_for(lambda: "n1" in mirror.items)
        assert dict(mirror.items) == {"n1": wanted}
        assert wanted.over_s == 60 and wanted.by == "ops" and wanted.at > 0
        await kv.put(Keys(prefix).drain("n1"), b'{"state": "draining"}')  # not a request
        await wait_for(lambda: "n1" not in mirror.items)
        await drain_requests(kv, prefix).put(wanted, name="n1")
        await wait_for(lambda: "n1" in mirror.items)
        assert await drain_requests(kv, prefix).delete("n1")
        await wait_for(lambda: not mirror.items)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
