"""The stable version: which nodes serve every user no release takes, as a stored, audited
fact at ``<prefix>/gray-stable/current`` beside the releases.

``promote`` ends a release and hands the stable track over to its target: the release is
written promoted first, then the stable record names the target, the release and the
revision it was promoted at. Every scheduler routes the stable track to the nodes the
stable target selects (``stable_nodes``); every access node outside it that serves no
release retires by drain (``retiring``). Until a first promote there is no record and the
stable track is every node no release fences, as before.

The two writes cannot be one transaction. A crash between them leaves a promoted release
newer than the stable record: :func:`hand_over_due` finds it, and the leader controller's
stepper finishes the hand-over each tick (the newest promotion wins). The record carries
its own change, so its audit record (``stable`` in the release's trail, keyed by the
stable key's revision) is written again, create-only, by whoever reads the trail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from control.common.errors import BAD_JSON, BadRequest
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.records import RecordStore, RecordType, to_data
from control.common.schema import build, setting
from control.gray.audit import AUDITS, AuditRecord
from control.gray.model import NAME_PATTERN, Release, Target

CURRENT = "current"  # the one record's name in ``gray-stable/``
STABLE_ACTION = "stable"  # the audit action of a hand-over, in the promoted release's trail
HAND_OVER_TRIES = 5  # compare-and-swap rounds against other writers of the one record


@dataclass(frozen=True)
class Stable:
    """The stable track's target, and the promotion that made it."""

    target: Target = setting(doc="the nodes every user outside the releases is served by")
    release: str = setting(doc="the promoted release that made it", pattern=NAME_PATTERN)
    release_revision: int = setting(doc="that release's revision once promoted", ge=1)
    previous: Mapping[str, str] = setting(
        MappingProxyType({}), "the target before ({}: every node no release fenced)"
    )
    previous_revision: int = setting(0, "the stable record's revision before (0: none)", ge=0)
    at: float = setting(0.0, "when, in seconds since the epoch")
    by: str = setting("", "who promoted")
    why: str = setting("", "the reason given, if any")

    def check(self, path: str) -> list[str]:
        return self.target.check(f"{path}.target")

    def audit(self, revision: int) -> AuditRecord:
        """The hand-over as its audit record (``revision``: the stable key's)."""
        change = (dict(self.previous) or None, to_data(self.target))
        return AuditRecord(
            release=self.release,
            action=STABLE_ACTION,
            revision=revision,
            from_revision=self.previous_revision,
            at=self.at,
            by=self.by,
            why=self.why,
            changes=MappingProxyType({"stable": change}),
            figures=MappingProxyType({"release_revision": self.release_revision}),
        )


def stable_from_json(raw: bytes, where: str = "stable") -> Stable:
    """Parse the stored stable record; raises BadRequest listing every problem."""
    try:
        data = json.loads(raw)
    except BAD_JSON as exc:
        raise BadRequest(where, f"not JSON ({exc})") from None
    problems: list[str] = []
    stable = build(Stable, data, where, problems)
    if problems:
        raise BadRequest(where, "; ".join(problems))
    return stable


STABLES: RecordType[Stable] = RecordType("stable version", stable_from_json)


# ---- pure decisions


def stable_target(records: Mapping[str, Stable]) -> Target | None:
    """The stable target a mirror of ``gray-stable/`` holds (None: no promote yet)."""
    current = records.get(CURRENT)
    return None if current is None else current.target


def hand_over_due(
    promoted: Iterable[tuple[Release, int]], stable: Stable | None
) -> tuple[Release, int] | None:
    """The newest promoted release (with its revision) the stable record does not yet
    follow; None when it is up to date."""
    newest = max(
        ((r, rev) for r, rev in promoted if r.state == "promoted"),
        key=lambda pair: pair[1],
        default=None,
    )
    if newest is None:
        return None
    if stable is not None and stable.release_revision >= newest[1]:
        return None
    return newest


def retiring(stable: Target | None, on: Release | None, pool: str, version: str) -> bool:
    """A node of the old stable fleet: a stable target is set and does not select it, and
    no release it serves keeps it (a canary of a release still running is not retired)."""
    return stable is not None and on is None and not stable.selects(pool, version)


# ---- the store


@dataclass(frozen=True)
class StoredStable:
    stable: Stable
    revision: int


class StableStore:
    """The one stable record over any :class:`KeyValueStore`, changed by compare-and-swap,
    each hand-over audited in the promoted release's trail."""

    def __init__(
        self, kv: KeyValueStore, prefix: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.kv = kv
        self.keys = Keys(prefix)
        self.records = RecordStore(kv, self.keys.gray_stable, STABLES)
        self.clock = clock

    async def get(self) -> StoredStable | None:
        stored = await self.records.get(CURRENT)
        if stored is None or stored.record is None:
            return None
        return StoredStable(stored.record, stored.revision)

    async def hand_over(
        self, release: Release, release_revision: int, *, by: str, why: str = ""
    ) -> StoredStable:
        """Make ``release``'s target the stable one (``release`` promoted at
        ``release_revision``); a newer promotion already recorded wins and is returned."""
        for _ in range(HAND_OVER_TRIES):
            current = await self.get()
            if current is not None and current.stable.release_revision >= release_revision:
                return current
            expected = 0 if current is None else current.revision
            before = {} if current is None else dict(current.stable.target.to_config())
            stable = Stable(
                target=release.target,
                release=release.name,
                release_revision=release_revision,
                previous=MappingProxyType(before),
                previous_revision=expected,
                at=self.clock(),
                by=by,
                why=why,
            )
            ok, revision = await self.records.cas(stable, expected, name=CURRENT)
            if ok:
                written = StoredStable(stable, revision)
                await self.write_audit(written)
                return written
        raise BadRequest("stable", f"lost {HAND_OVER_TRIES} races for the stable record")

    async def write_audit(self, stored: StoredStable) -> None:
        """Create-only: the same hand-over rewritten is the same record."""
        record = stored.stable.audit(stored.revision)
        key = self.keys.audit(record.release, stored.revision)
        await self.kv.compare_and_swap(key, AUDITS.serialize(record), 0)

    def mirror(
        self, on_change: Callable[[Mapping[str, Stable]], None], verify_s: float = 10.0
    ) -> PrefixMirror[Stable]:
        return self.records.mirror(on_change, verify_s=verify_s, only=CURRENT)


def as_data(stored: StoredStable | None) -> dict[str, Any] | None:
    """The stable record for an answer (None: none yet)."""
    if stored is None:
        return None
    return {**to_data(stored.stable), "revision": stored.revision}
