"""The release store over both backends: create / get / list / change / delete by
compare-and-swap on the revision the caller read, a clear conflict naming the current
revision, and an audit record for every change that survives a writer stopping between
its two writes."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Mapping

import pytest

from control.common.errors import BackendUnavailable, BadRequest
from control.common.keys import Keys
from control.common.kv import Entry, KeyValueStore, WatchEvent
from control.gray.model import Release, Target
from control.gray.store import (
    AuditRecord,
    ReleaseConflict,
    ReleaseExists,
    ReleaseMissing,
    ReleaseStore,
)

R1 = Release(name="r1", target=Target(pool="canary"), percent=5, steps=(5, 25, 100))


def ticking() -> itertools.count[float]:
    return itertools.count(1000.0)


def store_of(kv: KeyValueStore, prefix: str) -> ReleaseStore:
    clock = ticking()
    return ReleaseStore(kv, prefix, clock=lambda: next(clock))


class CrashingKV(KeyValueStore):
    """A backend for a writer that dies right after its next swap of a release (before
    its audit record): once ``arm()``-ed, every call after that swap fails."""

    name = "crashing"

    def __init__(self, inner: KeyValueStore, dies_after: str = "/gray/") -> None:
        self.inner = inner
        self.dies_after = dies_after  # the directory whose next swap is the last
        self.armed = False
        self.dead = False

    def arm(self) -> None:
        self.armed, self.dead = True, False

    def _alive(self) -> None:
        if self.dead:
            raise BackendUnavailable("the writer died after its swap")

    async def _get(self, key: str) -> Entry | None:
        self._alive()
        return await self.inner.get(key)

    async def _range(self, prefix: str) -> tuple[list[Entry], int]:
        self._alive()
        return await self.inner.range(prefix)

    async def _put(self, key: str, value: bytes, lease: int) -> int:
        self._alive()
        return await self.inner.put(key, value, lease)

    async def _compare_and_swap(
        self, key: str, value: bytes, expected: int, lease: int
    ) -> tuple[bool, int]:
        self._alive()
        ok, revision = await self.inner.compare_and_swap(key, value, expected, lease)
        if ok and self.armed and self.dies_after in key:
            self.armed, self.dead = False, True
        return ok, revision

    async def _delete(self, key: str, expected: int | None) -> bool:
        self._alive()
        return await self.inner.delete(key, expected)

    async def _grant_lease(self, ttl: int) -> int:
        return await self.inner.grant_lease(ttl)

    async def keepalive(self, lease: int) -> int:
        return await self.inner.keepalive(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self.inner.revoke_lease(lease)

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start_revision)


async def test_create_get_list(kv: KeyValueStore, prefix: str) -> None:
    store = store_of(kv, prefix)
    assert await store.get("r1") is None and await store.list() == []
    created = await store.create(R1, by="alice", why="canary for 5.13")
    assert created.release == R1 and created.revision > 0
    assert await store.get("r1") == created
    r0 = Release(name="r0", target=Target(version="5.13"))
    other = await store.create(r0, by="bob")
    assert [s.release.name for s in await store.list()] == ["r0", "r1"]
    assert await store.list() == [other, created]
    with pytest.raises(ReleaseExists) as exists:
        await store.create(dataclasses.replace(R1, percent=50), by="carol")
    assert exists.value.current == created.revision
    assert str(created.revision) in str(exists.value)
    assert (await store.get("r1")) == created  # the refused create changed nothing
    [record] = await store.history("r1")
    assert (record.action, record.by, record.why) == ("create", "alice", "canary for 5.13")
    assert (record.revision, record.from_revision, record.at) == (created.revision, 0, 1000.0)
    assert record.changes["percent"] == (None, 5.0)
    assert record.changes["steps"] == (None, [5.0, 25.0, 100.0])
    assert record.changes["target"] == (None, {"pool": "canary"})
    assert set(record.changes) == {f.name for f in dataclasses.fields(Release)}


async def test_change_and_conflict_naming_the_current_revision(
    kv: KeyValueStore, prefix: str
) -> None:
    store = store_of(kv, prefix)
    first = await store.create(R1, by="alice")
    ten = dataclasses.replace(R1, percent=10)
    second = await store.change("r1", first.revision, ten, action="set-percent", by="bob")
    assert second.revision > first.revision and second.release == ten
    assert await store.get("r1") == second
    # A writer that read the first revision loses, and learns the current one.
    with pytest.raises(ReleaseConflict) as lost:
        await store.change(
            "r1", first.revision, dataclasses.replace(R1, state="paused"), action="pause", by="c"
        )
    err = lost.value
    assert (err.name, err.expected, err.current) == ("r1", first.revision, second.revision)
    assert f"revision {second.revision}" in str(err)
    assert await store.get("r1") == second
    with pytest.raises(ReleaseMissing):
        await store.change("nope", 1, dataclasses.replace(R1, name="nope"), action="step", by="c")
    with pytest.raises(BadRequest):  # the body names another release
        await store.change(
            "r1", second.revision, dataclasses.replace(R1, name="r2"), action="apply", by="c"
        )
    with pytest.raises(BadRequest):  # create and delete have their own methods
        await store.change("r1", second.revision, ten, action="delete", by="c")
    with pytest.raises(BadRequest):  # never store what the schedulers would refuse
        await store.change(
            "r1", second.revision, dataclasses.replace(R1, percent=101), action="apply", by="c"
        )
    assert [r.action for r in await store.history("r1")] == ["create", "set-percent"]


async def test_delete_keeps_the_trail(kv: KeyValueStore, prefix: str) -> None:
    store = store_of(kv, prefix)
    first = await store.create(R1, by="alice")
    paused = dataclasses.replace(R1, state="paused")
    second = await store.change("r1", first.revision, paused, action="pause", by="bob")
    with pytest.raises(ReleaseConflict) as stale:
        await store.delete("r1", first.revision, by="carol")
    assert stale.value.current == second.revision
    assert await store.get("r1") == second
    await store.delete("r1", second.revision, by="carol", why="done")
    assert await store.get("r1") is None and await store.list() == []
    assert await kv.get(Keys(prefix).release("r1")) is None
    with pytest.raises(ReleaseMissing):
        await store.delete("r1", second.revision, by="carol")
    with pytest.raises(ReleaseMissing):
        await store.change("r1", second.revision, R1, action="resume", by="carol")
    again = await store.create(R1, by="dave")  # the name is free again
    trail = await store.history("r1")
    assert [r.action for r in trail] == ["create", "pause", "delete", "create"]
    gone = trail[2]
    assert (gone.revision, gone.from_revision, gone.by, gone.why) == (
        0,
        second.revision,
        "carol",
        "done",
    )
    assert gone.changes["state"] == ("paused", None)
    assert trail[3].from_revision == 0 and trail[3].revision == again.revision


async def test_history_in_order_with_diffs(kv: KeyValueStore, prefix: str) -> None:
    store = store_of(kv, prefix)
    stored = await store.create(R1, by="alice")
    steps: list[tuple[str, Release, Mapping[str, object]]] = [
        ("step", dataclasses.replace(R1, percent=25), {}),
        ("pause", dataclasses.replace(R1, percent=25, state="paused"), {"error_ratio": 3.5}),
        ("resume", dataclasses.replace(R1, percent=25), {}),
        ("rollback", dataclasses.replace(R1, percent=0, state="rolled_back"), {"over_s": 60}),
    ]
    for action, new, figures in steps:
        stored = await store.change(
            "r1", stored.revision, new, action=action, by="ops", why=action, figures=figures
        )
    trail = await store.history("r1")
    assert [r.action for r in trail] == ["create", "step", "pause", "resume", "rollback"]
    for before, after in itertools.pairwise(trail):
        assert after.from_revision == before.revision < after.revision
        assert after.at > before.at  # the injected clock, one tick per change
    assert trail[-1].revision == stored.revision
    assert dict(trail[1].changes) == {"percent": (5.0, 25.0)}
    assert dict(trail[2].changes) == {"state": ("running", "paused")}
    assert dict(trail[2].figures) == {"error_ratio": 3.5}
    assert dict(trail[4].changes) == {"percent": (25.0, 0.0), "state": ("running", "rolled_back")}
    assert dict(trail[4].figures) == {"over_s": 60} and trail[4].why == "rollback"
    assert await store.history("r1", limit=2) == trail[-2:]
    with pytest.raises(BadRequest):
        await store.history("r1", limit=0)
    # A decision that changes no field is still history.
    same = await store.change(
        "r1", stored.revision, stored.release, action="analysis", by="controller"
    )
    last = (await store.history("r1"))[-1]
    assert (last.action, dict(last.changes), last.revision) == ("analysis", {}, same.revision)
    assert await store.history("other") == []


async def test_audit_is_never_lost(kv: KeyValueStore, prefix: str) -> None:
    """A writer that dies after its change and before its audit record: the record is
    written by the next reader of the history, or by the next writer before it replaces
    that revision (a change, a delete), so the trail has no gap."""
    healthy = store_of(kv, prefix)
    crashing = CrashingKV(kv)
    broken = ReleaseStore(crashing, prefix)

    # 1. Created, its record not written; the history reader writes it.
    crashing.arm()
    with pytest.raises(BackendUnavailable):
        await broken.create(R1, by="alice")
    created = await healthy.get("r1")
    assert created is not None and created.release == R1
    assert (await kv.range(Keys(prefix).release_audit("r1")))[0] == []  # not yet
    assert [(r.action, r.by, r.revision) for r in await healthy.history("r1")] == [
        ("create", "alice", created.revision)
    ]

    # 2. Two changes by writers that died, then one by a healthy writer, and nobody read
    # the history in between: each writer wrote the record of the revision it replaced.
    revisions = [created.revision]
    for percent in (10, 25):
        crashing.arm()
        with pytest.raises(BackendUnavailable):
            await broken.change(
                "r1",
                revisions[-1],
                dataclasses.replace(R1, percent=percent),
                action="step",
                by="bob",
            )
        now = await healthy.get("r1")
        assert now is not None and now.release.percent == percent
        revisions.append(now.revision)
    final = await healthy.change(
        "r1", revisions[-1], dataclasses.replace(R1, percent=50), action="set-percent", by="carol"
    )
    revisions.append(final.revision)
    written, _ = await kv.range(Keys(prefix).release_audit("r1"))
    assert len(written) == 4  # no history read wrote any of them
    trail = await healthy.history("r1")
    assert [(r.action, r.by) for r in trail] == [
        ("create", "alice"),
        ("step", "bob"),
        ("step", "bob"),
        ("set-percent", "carol"),
    ]
    assert [r.revision for r in trail] == revisions
    assert [r.from_revision for r in trail] == [0, *revisions[:-1]]

    # 3. A delete that died half way: the release still routes (the schedulers keep it
    # until it is gone); the next reader finishes the delete and writes its record.
    crashing.arm()
    with pytest.raises(BackendUnavailable):
        await broken.delete("r1", final.revision, by="dave", why="cleanup")
    assert await kv.get(Keys(prefix).release("r1")) is not None
    assert await healthy.list() == []
    assert await kv.get(Keys(prefix).release("r1")) is None
    trail = await healthy.history("r1")
    assert (trail[-1].action, trail[-1].by, trail[-1].why) == ("delete", "dave", "cleanup")
    assert (trail[-1].revision, trail[-1].from_revision) == (0, final.revision)
    assert len(trail) == 5


async def test_the_mirror_sees_releases_not_their_audit(kv: KeyValueStore, prefix: str) -> None:
    """The schedulers' copy of the releases: the stored last change is not part of a
    release, and the audit directory is not under the releases'."""
    store = store_of(kv, prefix)
    views: list[Mapping[str, Release]] = []
    mirror = store.mirror(views.append, verify_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        await asyncio.wait_for(mirror.synced.wait(), 5)
        first = await store.create(R1, by="alice")
        ten = dataclasses.replace(R1, percent=10)
        await store.change("r1", first.revision, ten, action="step", by="bob")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while dict(mirror.items) != {"r1": ten}:
            assert loop.time() < deadline, f"mirror holds {dict(mirror.items)}"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_promote_hands_the_stable_version_over_audited(
    kv: KeyValueStore, prefix: str
) -> None:
    """The stable version is one record beside the releases: a hand-over is a
    compare-and-swap that a newer promotion wins, audited in the promoted release's trail
    (written by the next reader when its writer died before the record)."""
    store = store_of(kv, prefix)
    assert await store.stable.get() is None
    created = await store.create(R1, by="alice")
    done = dataclasses.replace(R1, percent=100, state="promoted")
    promoted = await store.change("r1", created.revision, done, action="promote", by="bob")
    handed = await store.stable.hand_over(done, promoted.revision, by="bob", why="5.13 is good")
    assert handed.stable.target == Target(pool="canary") and handed.revision > promoted.revision
    assert (handed.stable.release, handed.stable.release_revision) == ("r1", promoted.revision)
    assert await store.stable.get() == handed
    # An older promotion never takes the record back.
    assert await store.stable.hand_over(done, promoted.revision - 1, by="eve") == handed
    trail = await store.history("r1")
    assert [(r.action, r.by) for r in trail] == [
        ("create", "alice"),
        ("promote", "bob"),
        ("stable", "bob"),
    ]
    assert trail[-1].changes["stable"] == (None, {"pool": "canary"})
    assert (trail[-1].revision, trail[-1].why) == (handed.revision, "5.13 is good")

    # The next release promoted by a writer that died after its swap of the stable
    # record: the history reader writes the hand-over's record.
    r2 = Release(name="r2", target=Target(version="6.0"), percent=100, state="promoted")
    crashing = CrashingKV(kv, dies_after="/gray-stable/")
    crashing.arm()
    with pytest.raises(BackendUnavailable):
        await ReleaseStore(crashing, prefix).stable.hand_over(r2, handed.revision + 5, by="carol")
    now = await store.stable.get()
    assert now is not None and now.stable.target == Target(version="6.0")
    assert now.stable.previous == {"pool": "canary"}
    assert now.stable.previous_revision == handed.revision
    [record] = await store.history("r2")
    assert (record.action, record.by, record.revision) == ("stable", "carol", now.revision)
    assert record.changes["stable"] == ({"pool": "canary"}, {"version": "6.0"})
    assert record.from_revision == handed.revision


def test_audit_records_compare_by_value() -> None:
    record = AuditRecord(release="r", action="step", revision=2, from_revision=1, at=1.0, by="x")
    assert record == dataclasses.replace(record) and not record.changes and not record.figures
