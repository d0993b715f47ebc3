"""Releases in the key-value store at ``<prefix>/gray/<name>`` (read side and CAS write)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from control.common.errors import BAD_JSON, BadRequest
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.schema import build
from control.gray.model import Release

log = logging.getLogger(__name__)


def release_to_json(release: Release) -> bytes:
    data = {
        "name": release.name,
        "target": {k: v for k, v in vars(release.target).items() if v},
        "percent": release.percent,
        "include": {
            "uids": list(release.include.uids),
            "regions": list(release.include.regions),
            "platforms": list(release.include.platforms),
            "app_versions": [r.spec for r in release.include.app_versions],
        },
        "exclude": {"uids": list(release.exclude.uids)},
        "salt": release.salt,
        "steps": list(release.steps),
        "step_interval_s": release.step_interval_s,
        "analysis": dict(release.analysis),
        "state": release.state,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


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


class GrayStore:
    def __init__(self, kv: KeyValueStore, prefix: str = "/imctl") -> None:
        self.kv = kv
        self.prefix = prefix.rstrip("/") + "/gray/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def _parse(self, key: str, raw: bytes) -> Release | None:
        try:
            release = release_from_json(raw, key)
        except BadRequest as exc:
            log.warning("ignoring unreadable release: %s", exc)
            return None
        if self.key(release.name) != key:
            log.warning("ignoring release at %s: its name is %r", key, release.name)
            return None
        return release

    async def get(self, name: str) -> tuple[Release | None, int]:
        entry = await self.kv.get(self.key(name))
        if entry is None:
            return None, 0
        return self._parse(entry.key, entry.value), entry.mod_revision

    async def save(self, release: Release, expected_revision: int) -> tuple[bool, int]:
        """Compare-and-swap on the stored revision (0: create)."""
        return await self.kv.compare_and_swap(
            self.key(release.name), release_to_json(release), expected_revision
        )

    def mirror(
        self, on_change: Callable[[Mapping[str, Release]], None], verify_s: float = 10.0
    ) -> PrefixMirror[Release]:
        return PrefixMirror(self.kv, self.prefix, self._parse, on_change, verify_s=verify_s)
