"""The status cluster's records in the key-value store, beside the node registry:

    <prefix>/presence/ring       RingSpec: the shards now and, while migrating, before
    <prefix>/presence/mover      MoverControl: an operator's pause and throttle
    <prefix>/presence/progress   MoverProgress: what the leader's mover has done so far

The ring is seeded from config by the first process that finds none; after that the store
is the truth (config only seeds), and every process that routes users follows it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from control.common.errors import BadRequest
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.records import RecordStore, RecordType, Stored
from control.common.schema import build, setting
from control.presence.ring import RingSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

RING, MOVER, PROGRESS = "ring", "mover", "progress"
DEFAULT_THROTTLE_PER_S = 50_000.0


@dataclass(frozen=True)
class MoverControl:
    """What an operator sets while a migration runs (read before every batch)."""

    paused: bool = setting(False, "no batch moves while set")
    throttle_per_s: float = setting(
        DEFAULT_THROTTLE_PER_S, "users moved per second, at most", gt=0, le=10_000_000
    )


@dataclass(frozen=True)
class MoverProgress:
    """The leader mover's account of the migration to ``version`` (a new leader resumes
    from it: ``cursors`` per shard, ``moved`` so far)."""

    version: int = setting(doc="the ring version being migrated to", ge=1)
    moved: int = setting(0, "users moved so far", ge=0)
    expected: int = setting(0, "users the ring change should move (estimate)", ge=0)
    rate_per_s: float = setting(0.0, "users moved per second, recently", ge=0)
    passes: int = setting(0, "full passes over every shard finished", ge=0)
    cursors: Mapping[str, str] = setting(
        MappingProxyType({}), "per shard: where the current pass is"
    )
    state: str = setting("moving", "moving, paused, or stable")
    updated_at: float = setting(0.0, "unix time of this record", ge=0)
    by: str = setting("", "the controller that wrote it")

    @property
    def remaining(self) -> int:
        return max(0, self.expected - self.moved)

    @property
    def eta_s(self) -> float | None:
        return self.remaining / self.rate_per_s if self.rate_per_s > 0 else None


def _parser(cls: type[T], what: str) -> Callable[[bytes, str], T]:
    """A parser of JSON into ``cls``: every problem named at once (BadRequest)."""

    def parse(raw: bytes, where: str = what) -> T:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(where, f"not JSON ({exc})") from None
        problems: list[str] = []
        record: T = build(cls, data, where, problems)
        checks = getattr(record, "problems", None)
        if not problems and checks is not None:
            problems += [f"{where}.{p}" for p in checks()]
        if problems:
            raise BadRequest(where, "; ".join(problems))
        return record

    return parse


def parse_ring(raw: bytes, where: str = "ring") -> RingSpec:
    """A stored ring spec; raises BadRequest listing every problem."""
    return _parser(RingSpec, "ring")(raw, where)


RING_SPECS: RecordType[RingSpec] = RecordType("ring spec", parse_ring)
MOVER_CONTROLS: RecordType[MoverControl] = RecordType(
    "mover control", _parser(MoverControl, "mover")
)
MOVER_PROGRESS: RecordType[MoverProgress] = RecordType(
    "mover progress", _parser(MoverProgress, "progress")
)


class RingStore:
    """The three records above on one key-value store."""

    def __init__(self, kv: KeyValueStore, prefix: str) -> None:
        directory = Keys(prefix).presence
        self.rings = RecordStore(kv, directory, RING_SPECS)
        self.controls = RecordStore(kv, directory, MOVER_CONTROLS)
        self.progress = RecordStore(kv, directory, MOVER_PROGRESS)

    async def ring(self) -> Stored[RingSpec] | None:
        return await self.rings.get(RING)

    async def seed(self, spec: RingSpec) -> RingSpec:
        """The stored ring; ``spec`` (from config) is stored first when there is none."""
        for _ in range(3):
            stored = await self.ring()
            if stored is not None and stored.record is not None:
                if _shards(stored.record) != _shards(spec) and not stored.record.migrating:
                    log.warning(
                        "presence ring: the stored ring (version %d) differs from the config's "
                        "shards; the stored one is used (config only seeds an empty store)",
                        stored.record.version,
                    )
                return stored.record
            if stored is not None:  # unreadable: never overwrite what an operator wrote
                raise BadRequest("presence ring", f"{self.rings.key(RING)} is not a ring spec")
            created, _ = await self.rings.cas(spec, 0, name=RING)
            if created:
                log.warning("presence ring: seeded version %d from config", spec.version)
                return spec
        raise BadRequest("presence ring", "could not read or seed the ring spec")

    async def change(self, spec: RingSpec, expected: int) -> tuple[bool, int]:
        """Compare-and-swap the ring over revision ``expected``."""
        return await self.rings.cas(spec, expected, name=RING)

    async def control(self) -> MoverControl:
        stored = await self.controls.get(MOVER)
        return stored.record if stored is not None and stored.record else MoverControl()

    async def set_control(self, control: MoverControl) -> None:
        await self.controls.put(control, name=MOVER)

    async def read_progress(self) -> MoverProgress | None:
        stored = await self.progress.get(PROGRESS)
        return stored.record if stored is not None else None

    async def write_progress(self, progress: MoverProgress) -> None:
        await self.progress.put(progress, name=PROGRESS)


def _shards(spec: RingSpec) -> set[tuple[str, str, int]]:
    return {(s.id, s.url, s.weight) for s in spec.shards}
