"""Releases in the key-value store at ``<prefix>/gray/<name>``, changed only by
compare-and-swap, each change leaving an :class:`~control.gray.audit.AuditRecord` at
``<prefix>/gray-audit/<name>/<revision>``.

The key-value store has no transaction over two keys, so the audit record cannot be written
in the same step as the change. It is never lost all the same: the release's value carries
its own last change (``last_change``: the audit record less its revision, which is the
entry's ``mod_revision``), and the audit key is written from it right after the change and
again, create-only, by every writer before its compare-and-swap replaces that revision, and
by :meth:`ReleaseStore.history` when it is missing. A crash between the two writes leaves a
record that the next reader writes; a compare-and-swap never replaces a revision whose
record is not written. A delete is two writes for the same reason: the release is first
rewritten carrying its ``delete`` change (its routing unchanged), then removed; a reader
that finds such a value finishes the delete.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control.common.errors import BAD_JSON, BadRequest, ImctlError
from control.common.keys import Keys, audit_name
from control.common.kv import Entry, KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.records import PARSE_ERRORS, RecordStore, RecordType, dump_json, to_data
from control.common.schema import build
from control.gray.audit import (
    ACTION_PATTERN,
    AUDITS,
    CREATE,
    DELETE,
    AuditRecord,
    audit_from_data,
    diff,
)
from control.gray.model import Release
from control.gray.stable import StableStore

__all__ = [
    "RELEASES",
    "AuditRecord",
    "GrayStore",
    "ReleaseConflict",
    "ReleaseExists",
    "ReleaseMissing",
    "ReleaseStore",
    "StoredRelease",
    "release_from_json",
    "release_to_json",
]

log = logging.getLogger(__name__)
LAST_CHANGE = "last_change"  # the key of a stored release's own last change
_ACTION = re.compile(ACTION_PATTERN)


class ReleaseConflict(ImctlError):
    """The release is no longer at the revision the caller read: read it again."""

    def __init__(self, name: str, expected: int, current: int) -> None:
        self.name, self.expected, self.current = name, expected, current
        super().__init__(
            f"release {name!r} is at revision {current}, not {expected}: "
            "someone changed it since it was read; read it again and retry"
        )


class ReleaseMissing(ImctlError):
    """No release of that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no release named {name!r}")


class ReleaseExists(ImctlError):
    """A create over a release that is already there."""

    def __init__(self, name: str, current: int) -> None:
        self.name, self.current = name, current
        super().__init__(f"release {name!r} already exists (revision {current}): use apply")


def release_to_json(release: Release) -> bytes:
    """Every field of the release (the inverse of :func:`release_from_json`)."""
    return dump_json(release)


def _load(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except BAD_JSON as exc:
        raise BadRequest(where, f"not JSON ({exc})") from None


def release_from_json(raw: bytes, where: str = "release") -> Release:
    """Parse a stored release (its ``last_change``, if any, aside); raises BadRequest
    listing every problem."""
    data = _load(raw, where)
    if isinstance(data, dict):
        data.pop(LAST_CHANGE, None)
    problems: list[str] = []
    release = build(Release, data, where, problems)
    if problems:
        raise BadRequest(where, "; ".join(problems))
    return release


def _release_name(release: Release) -> str:
    return release.name


RELEASES: RecordType[Release] = RecordType(
    "release", release_from_json, release_to_json, name_of=_release_name
)


@dataclass(frozen=True)
class StoredRelease:
    """A release as read, with the revision the next change must name."""

    release: Release
    revision: int


@dataclass(frozen=True)
class _Read:
    """A stored release and the change that made it (None: written without one)."""

    stored: StoredRelease
    change: AuditRecord | None


class ReleaseStore:
    """Releases over any :class:`KeyValueStore` (embedded and etcd): compare-and-swap on
    the revision the caller read, and an audit record for every change."""

    def __init__(
        self, kv: KeyValueStore, prefix: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.kv = kv
        self.keys = Keys(prefix)
        self.records = RecordStore(kv, self.keys.gray, RELEASES)
        self.clock = clock
        #: the stable version beside the releases (promote hands it over)
        self.stable = StableStore(kv, prefix, clock=clock)

    # ---- reads

    async def get(self, name: str) -> StoredRelease | None:
        """The release and its revision; None when there is none (or it is not readable)."""
        read = await self._read(name)
        return None if read is None else read.stored

    async def list(self) -> list[StoredRelease]:
        """Every readable release, by name."""
        entries, _ = await self.kv.range(self.keys.gray)
        found: list[StoredRelease] = []
        for entry in sorted(entries, key=lambda e: e.key):
            read = await self._settle(entry)
            if read is not None:
                found.append(read.stored)
        return found

    async def history(self, name: str, limit: int = 100) -> builtins.list[AuditRecord]:
        """The last ``limit`` changes of the release name, oldest first (a release deleted
        and created again keeps one trail)."""
        if limit < 1:
            raise BadRequest("limit", f"must be at least 1, got {limit}")
        read = await self._read(name)
        trail = RecordStore(self.kv, self.keys.release_audit(name), AUDITS)
        records, _ = await trail.list()
        if read is not None and read.change is not None:
            written = audit_name(read.stored.revision)
            if written not in records:  # the writer stopped between its two writes
                await self._write_audit(read.stored.revision, read.change)
                records[written] = read.change
        stable = await self.stable.get()
        if stable is not None and stable.stable.release == name:
            handed = audit_name(stable.revision)
            if handed not in records:  # the hand-over's writer stopped before its record
                await self.stable.write_audit(stable)
                records[handed] = stable.stable.audit(stable.revision)
        return [records[key] for key in sorted(records)[-limit:]]

    # ---- changes

    async def create(self, release: Release, *, by: str, why: str = "") -> StoredRelease:
        """Store a new release; ReleaseExists when the name is taken."""
        self._check(release)
        there = await self._read(release.name)  # also finishes a pending delete
        if there is not None:
            raise ReleaseExists(release.name, there.stored.revision)
        change = self._change(release.name, CREATE, 0, diff(None, release), by, why, None)
        ok, revision = await self.kv.compare_and_swap(
            self.records.key(release.name), self._encode(release, change), 0
        )
        if not ok:
            raise ReleaseExists(release.name, revision)
        return await self._written(release, revision, change)

    async def change(
        self,
        name: str,
        expected: int,
        new: Release,
        *,
        action: str,
        by: str,
        why: str = "",
        figures: Mapping[str, Any] | None = None,
    ) -> StoredRelease:
        """Replace the release at revision ``expected`` (the one the caller read) by ``new``.

        ReleaseConflict naming the current revision when it moved on, ReleaseMissing when
        it is gone; the audit record holds the field diff (an empty one is still recorded:
        a decision that changed nothing is history too).
        """
        if new.name != name:
            raise BadRequest("release.name", f"is {new.name!r}, not {name!r}")
        if not _ACTION.fullmatch(action) or action in (CREATE, DELETE):
            raise BadRequest("action", f"{action!r} is not a change verb")
        self._check(new)
        current = await self._current(name, expected)
        change = self._change(
            name, action, expected, diff(current.stored.release, new), by, why, figures
        )
        revision = await self._swap(name, expected, self._encode(new, change))
        return await self._written(new, revision, change)

    async def delete(self, name: str, expected: int, *, by: str, why: str = "") -> None:
        """Delete the release at revision ``expected``; ReleaseConflict / ReleaseMissing as
        :meth:`change`. Its audit trail stays."""
        current = await self._current(name, expected)
        old = current.stored.release
        change = self._change(name, DELETE, expected, diff(old, None), by, why, None)
        # Step one: the release as it was, carrying its delete (see the module docstring).
        marked = await self._swap(name, expected, self._encode(old, change))
        await self._finish_delete(name, marked, change)

    def mirror(
        self, on_change: Callable[[Mapping[str, Release]], None], verify_s: float = 10.0
    ) -> PrefixMirror[Release]:
        """A live copy of every release by name (what the scheduler routes by)."""
        return self.records.mirror(on_change, verify_s=verify_s)

    # ---- the parts

    def _check(self, release: Release) -> None:
        """Never store what the store's own readers (every scheduler) would refuse."""
        release_from_json(release_to_json(release), f"release {release.name!r}")

    def _change(
        self,
        name: str,
        action: str,
        from_revision: int,
        changes: Mapping[str, tuple[Any, Any]],
        by: str,
        why: str,
        figures: Mapping[str, Any] | None,
    ) -> AuditRecord:
        return AuditRecord(
            release=name,
            action=action,
            revision=0,  # the entry's revision once written (0 stays for a delete)
            from_revision=from_revision,
            at=self.clock(),
            by=by,
            why=why,
            changes=changes,
            figures=to_data(figures or {}),
        )

    def _encode(self, release: Release, change: AuditRecord) -> bytes:
        data = to_data(release)
        last = to_data(change)
        del last["revision"], last["release"]  # the entry's own revision and name
        data[LAST_CHANGE] = last
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    def _decode(self, entry: Entry, release: Release) -> AuditRecord | None:
        """The change a stored release carries (None for one written without the store)."""
        where = f"{entry.key}.{LAST_CHANGE}"
        last = _load(entry.value, entry.key).get(LAST_CHANGE)  # read as a release already
        if last is None:
            return None
        try:
            if not isinstance(last, dict):
                raise BadRequest(where, "expected a mapping")
            revision = 0 if last.get("action") == DELETE else entry.mod_revision
            return audit_from_data({**last, "release": release.name, "revision": revision}, where)
        except PARSE_ERRORS as exc:
            log.warning("a change that cannot be audited: %s", exc)
            return None

    async def _read(self, name: str) -> _Read | None:
        entry = await self.kv.get(self.records.key(name))
        return None if entry is None else await self._settle(entry)

    async def _settle(self, entry: Entry) -> _Read | None:
        """The release at ``entry``, a pending delete finished (then None)."""
        release = self.records.read(entry.key, entry.value)
        if release is None:
            return None
        change = self._decode(entry, release)
        if change is not None and change.action == DELETE:
            await self._finish_delete(release.name, entry.mod_revision, change)
            return None
        return _Read(StoredRelease(release, entry.mod_revision), change)

    async def _current(self, name: str, expected: int) -> _Read:
        """The release at ``expected``, its own audit record written first: a swap must
        never replace a revision whose record is not written."""
        read = await self._read(name)
        if read is None:
            raise ReleaseMissing(name)
        if read.stored.revision != expected:
            raise ReleaseConflict(name, expected, read.stored.revision)
        if read.change is not None:
            await self._write_audit(read.stored.revision, read.change)
        return read

    async def _swap(self, name: str, expected: int, value: bytes) -> int:
        ok, revision = await self.kv.compare_and_swap(self.records.key(name), value, expected)
        if ok:
            return revision
        if revision == 0:
            raise ReleaseMissing(name)
        raise ReleaseConflict(name, expected, revision)

    async def _written(self, release: Release, revision: int, change: AuditRecord) -> StoredRelease:
        await self._write_audit(revision, change)
        return StoredRelease(release, revision)

    async def _write_audit(self, key_revision: int, change: AuditRecord) -> None:
        """Create-only: a record rewritten from the same stored change is the same record."""
        if change.action != DELETE:
            change = dataclasses.replace(change, revision=key_revision)
        key = self.keys.audit(change.release, key_revision)
        await self.kv.compare_and_swap(key, AUDITS.serialize(change), 0)

    async def _finish_delete(self, name: str, marked: int, change: AuditRecord) -> None:
        await self._write_audit(marked, change)
        await self.kv.delete(self.records.key(name), expected=marked)


class GrayStore:
    """The scheduler's read side (its feed mirrors releases) and a raw compare-and-swap
    that leaves no audit record: changes go through :class:`ReleaseStore`."""

    def __init__(self, kv: KeyValueStore, prefix: str = "/imctl") -> None:
        self.kv = kv
        self.records = RecordStore(kv, Keys(prefix).gray, RELEASES)
        self.prefix = self.records.prefix

    def key(self, name: str) -> str:
        return self.records.key(name)

    async def get(self, name: str) -> tuple[Release | None, int]:
        stored = await self.records.get(name)
        if stored is None:
            return None, 0
        return stored.record, stored.revision

    async def save(self, release: Release, expected_revision: int) -> tuple[bool, int]:
        """Compare-and-swap on the stored revision (0: create)."""
        return await self.records.cas(release, expected_revision)

    def mirror(
        self, on_change: Callable[[Mapping[str, Release]], None], verify_s: float = 10.0
    ) -> PrefixMirror[Release]:
        return self.records.mirror(on_change, verify_s=verify_s)
