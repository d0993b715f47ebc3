"""The key-value contract, held against the embedded store and a real etcd alike."""

from __future__ import annotations

import asyncio

import pytest

from control.common.errors import BackendUnavailable, FatalError, LeaseNotFound, RevisionCompacted
from control.common.kv import KeyValueStore, WatchEvent
from control.common.kv.embedded import EmbeddedKV
from control.testing import until


async def test_put_get_range(kv: KeyValueStore, prefix: str) -> None:
    rev1 = await kv.put(f"{prefix}/a", b"1")
    rev2 = await kv.put(f"{prefix}/b", b"2")
    await kv.put(f"{prefix}x/c", b"outside")  # shares the string prefix but not the folder
    assert rev2 > rev1
    entry = await kv.get(f"{prefix}/a")
    assert entry is not None and entry.value == b"1" and entry.mod_revision == rev1
    entries, revision = await kv.range(f"{prefix}/")
    assert [(e.key, e.value) for e in entries] == [(f"{prefix}/a", b"1"), (f"{prefix}/b", b"2")]
    assert revision >= rev2
    assert await kv.get(f"{prefix}/missing") is None


async def test_compare_and_swap(kv: KeyValueStore, prefix: str) -> None:
    key = f"{prefix}/cas"
    ok, rev = await kv.compare_and_swap(key, b"v1", 0)
    assert ok
    ok2, current = await kv.compare_and_swap(key, b"again", 0)
    assert not ok2 and current == rev  # exists already: the caller learns its revision
    ok3, rev3 = await kv.compare_and_swap(key, b"v2", rev)
    assert ok3 and rev3 > rev
    ok4, current4 = await kv.compare_and_swap(key, b"stale", rev)
    assert not ok4 and current4 == rev3
    entry = await kv.get(key)
    assert entry is not None and entry.value == b"v2"


async def test_conditional_delete(kv: KeyValueStore, prefix: str) -> None:
    key = f"{prefix}/del"
    rev = await kv.put(key, b"x")
    assert not await kv.delete(key, expected=rev + 100)
    assert await kv.get(key) is not None
    assert await kv.delete(key, expected=rev)
    assert await kv.get(key) is None
    assert not await kv.delete(key)


async def test_lease_keeps_and_drops_keys(kv: KeyValueStore, prefix: str) -> None:
    lease = await kv.grant_lease(2)
    await kv.put(f"{prefix}/leased", b"x", lease=lease)
    assert await kv.keepalive(lease) >= 1
    await kv.revoke_lease(lease)
    assert await kv.get(f"{prefix}/leased") is None
    with pytest.raises(LeaseNotFound):
        await kv.keepalive(lease)
    with pytest.raises(LeaseNotFound):
        await kv.put(f"{prefix}/other", b"x", lease=lease)


async def test_lease_expires_without_keepalive(kv: KeyValueStore, prefix: str) -> None:
    lease = await kv.grant_lease(1)
    await kv.put(f"{prefix}/ttl", b"x", lease=lease)

    async def gone() -> bool:
        return await kv.get(f"{prefix}/ttl") is None

    await until(gone, 5, "leased key outlived its TTL", every=0.1)


async def test_watch_from_revision_replays_and_follows(kv: KeyValueStore, prefix: str) -> None:
    start = await kv.put(f"{prefix}/w/a", b"1")
    await kv.put(f"{prefix}/w/b", b"2")
    await kv.delete(f"{prefix}/w/a")
    seen: list[WatchEvent] = []

    async def collect() -> None:
        async for event in kv.watch(f"{prefix}/w/", start):
            seen.append(event)
            if len(seen) == 4:
                return

    task = asyncio.create_task(collect())
    await until(lambda: len(seen) == 3, 5, "the replay")  # then one followed live
    await kv.put(f"{prefix}/w/c", b"3")
    await asyncio.wait_for(task, 5)
    assert [(e.kind, e.key.rsplit("/", 1)[1]) for e in seen] == [
        ("put", "a"),
        ("put", "b"),
        ("delete", "a"),
        ("put", "c"),
    ]
    revisions = [e.revision for e in seen]
    assert revisions == sorted(revisions) and revisions[0] == start


async def test_keys_must_be_absolute(kv: KeyValueStore) -> None:
    with pytest.raises(FatalError):
        await kv.put("relative", b"x")
    with pytest.raises(FatalError):
        await kv.grant_lease(0)


async def test_embedded_history_compaction() -> None:
    kv = EmbeddedKV(history=4)
    await kv.connect()
    try:
        for i in range(10):
            await kv.put(f"/c/{i}", b"x")
        with pytest.raises(RevisionCompacted):
            async for _ in kv.watch("/c/", 1):
                break
    finally:
        await kv.close()


async def test_etcd_moves_to_the_next_member(etcd_server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    from control.common.kv.etcd import EtcdKV
    from control.testing import free_port

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    kv = EtcdKV([dead, etcd_server.endpoint], timeout_s=2)
    await kv.connect()
    try:
        assert kv.endpoint == etcd_server.endpoint and kv.failovers == 1
        rev = await kv.put(f"{prefix}/x", b"1")
        entry = await kv.get(f"{prefix}/x")
        assert entry is not None and entry.mod_revision == rev
    finally:
        await kv.close()
    alone = EtcdKV(dead, timeout_s=2)
    with pytest.raises(BackendUnavailable):
        await alone.connect()
    await alone.close()
