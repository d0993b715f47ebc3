"""Releases in the key-value store at ``<prefix>/gray/<name>`` (read side and CAS write)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control.common.errors import BAD_JSON, BadRequest, ImctlError
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.records import RecordStore, RecordType, dump_json
from control.common.schema import build
from control.gray.model import Release


def release_to_json(release: Release) -> bytes:
    """Every field of the release (the inverse of :func:`release_from_json`)."""
    return dump_json(release)


def release_from_json(raw: bytes, where: str = "release") -> Release:
    """Parse a stored release; raises BadRequest listing every problem."""
    try:
        data = json.loads(raw)
    except BAD_JSON as exc:
        raise BadRequest(where, f"not JSON ({exc})") from None
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


class GrayStore:
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


# -- The release store's contract (issue 15, item 1) ---------------------------------------------
# Built by the gray-store branch; this block is only the contract's names, so the admin routes
# (control/admin/gray.py) type-check and import before that branch is merged. On merge, take
# gray-store's store.py whole.


class ReleaseConflict(ImctlError):
    """A change lost a race: the release is no longer at the revision the caller read."""

    def __init__(self, name: str, expected: int, current: int) -> None:
        self.name, self.expected, self.current = name, expected, current
        super().__init__(
            f"release {name!r} is at revision {current}, not {expected}: "
            "someone changed it since it was read; read it again and retry"
        )


class ReleaseMissing(ImctlError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no release named {name!r}")


class ReleaseExists(ImctlError):
    def __init__(self, name: str, current: int) -> None:
        self.name, self.current = name, current
        super().__init__(f"release {name!r} already exists (revision {current}): use apply")


@dataclass(frozen=True)
class AuditRecord:
    release: str
    action: str
    revision: int
    from_revision: int
    at: float
    by: str
    why: str
    changes: Mapping[str, tuple[Any, Any]]
    figures: Mapping[str, Any]


@dataclass(frozen=True)
class StoredRelease:
    release: Release
    revision: int


class ReleaseStore:
    """The contract's interface; gray-store's branch implements it."""

    def __init__(self, kv: KeyValueStore, prefix: str) -> None:
        self.kv, self.prefix = kv, prefix

    async def get(self, name: str) -> StoredRelease | None:
        raise NotImplementedError

    async def list(self) -> list[StoredRelease]:
        raise NotImplementedError

    async def create(self, release: Release, *, by: str, why: str = "") -> StoredRelease:
        raise NotImplementedError

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
        raise NotImplementedError

    async def delete(self, name: str, expected: int, *, by: str, why: str = "") -> None:
        raise NotImplementedError

    async def history(self, name: str, limit: int = 100) -> builtins.list[AuditRecord]:
        raise NotImplementedError
