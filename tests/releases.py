"""A release store for tests that need one without a key-value store: the contract of
control/gray/store.py's ReleaseStore, in memory, with revisions counting 1, 2, 3... (so a
stand-in admin API answers the same numbers on every run)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from control.gray.audit import diff
from control.gray.model import Release
from control.gray.store import (
    AuditRecord,
    ReleaseConflict,
    ReleaseExists,
    ReleaseMissing,
    ReleaseStore,
    StoredRelease,
)


class MemoryReleaseStore(ReleaseStore):
    """The release store's contract in memory: one revision counter, CAS on it, an audit
    record per change."""

    def __init__(self) -> None:
        self.stored: dict[str, StoredRelease] = {}
        self.audit: list[AuditRecord] = []
        self.counter = 0

    def _record(
        self, name: str, action: str, revision: int, was: int, changes: Any, by: str, why: str,
        figures: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.audit.append(
            AuditRecord(name, action, revision, was, time.time(), by, why, changes, figures or {})
        )

    def put(self, release: Release) -> StoredRelease:
        self.counter += 1
        self.stored[release.name] = StoredRelease(release, self.counter)
        return self.stored[release.name]

    async def get(self, name: str) -> StoredRelease | None:
        return self.stored.get(name)

    async def list(self) -> list[StoredRelease]:
        return [self.stored[n] for n in sorted(self.stored)]

    async def create(self, release: Release, *, by: str, why: str = "") -> StoredRelease:
        if release.name in self.stored:
            raise ReleaseExists(release.name, self.stored[release.name].revision)
        stored = self.put(release)
        self._record(release.name, "create", stored.revision, 0, diff(None, release), by, why)
        return stored

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
        current = self.stored.get(name)
        if current is None:
            raise ReleaseMissing(name)
        if current.revision != expected:
            raise ReleaseConflict(name, expected, current.revision)
        stored = self.put(new)
        changes = diff(current.release, new)
        self._record(name, action, stored.revision, expected, changes, by, why, figures)
        return stored

    async def delete(self, name: str, expected: int, *, by: str, why: str = "") -> None:
        current = self.stored.get(name)
        if current is None:
            raise ReleaseMissing(name)
        if current.revision != expected:
            raise ReleaseConflict(name, expected, current.revision)
        del self.stored[name]
        self._record(name, "delete", 0, expected, diff(current.release, None), by, why)

    async def history(self, name: str, limit: int = 100) -> list[AuditRecord]:
        return [r for r in self.audit if r.release == name][-limit:]
