"""Releases in the key-value store at ``<prefix>/gray/<name>`` (read side and CAS write)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from control.common.errors import BAD_JSON, BadRequest
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
