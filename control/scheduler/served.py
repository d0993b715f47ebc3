"""Propagation: each scheduler publishes, on its own lease, the release revisions its
serving snapshot holds (``<prefix>/schedulers/<id>``), so the admin API can say which
schedulers serve a release's current revision and which lag.

The record is written when the snapshot's revisions change, at most once per
``min_interval_s`` (a burst of changes becomes one write), and vanishes with the lease when
the scheduler dies. :func:`propagation` is the pure report over the records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from control.common.errors import ImctlError, LeaseNotFound
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.records import RecordStore, RecordType

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 1.0  # at most one write a second, whatever the snapshot does


def scheduler_id() -> str:
    """A name for this scheduler process: host, pid, and a random tail (several schedulers
    in one process, as in tests, stay apart)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ServedReleases:
    """What one scheduler serves: release name -> the store revision in its snapshot
    (0: a release from its config file, never stored)."""

    id: str
    releases: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    at: float = 0.0  # wall time of the write


def _parse(raw: bytes, where: str) -> ServedReleases:
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise ValueError(f"{where}: id: a non-empty string is required")
    releases = data.get("releases", {})
    if not isinstance(releases, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in releases.items()
    ):
        raise ValueError(f"{where}: releases: a map of name to revision (a whole number)")
    at = data.get("at", 0.0)
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise ValueError(f"{where}: at: a number is required")
    return ServedReleases(data["id"], MappingProxyType(dict(releases)), float(at))


def _serialize(record: ServedReleases) -> bytes:
    data = {"id": record.id, "releases": dict(record.releases), "at": record.at}
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


SERVED: RecordType[ServedReleases] = RecordType(
    "served releases record", _parse, _serialize, name_of=lambda r: r.id
)


def served_records(kv: KeyValueStore, prefix: str) -> RecordStore[ServedReleases]:
    return RecordStore(kv, Keys(prefix).schedulers, SERVED)


def propagation(current: Mapping[str, int], served: Iterable[ServedReleases]) -> dict[str, Any]:
    """Pure: per stored release (name -> its current revision), the schedulers serving that
    revision and those lagging (serving another, or none: they have not seen it yet)."""
    schedulers = sorted(served, key=lambda s: s.id)
    releases: dict[str, Any] = {}
    for name in sorted(current):
        revision = current[name]
        serving = [s.id for s in schedulers if s.releases.get(name) == revision]
        lagging = [
            {"id": s.id, "revision": s.releases.get(name, 0)}
            for s in schedulers
            if s.releases.get(name) != revision
        ]
        releases[name] = {"revision": revision, "serving": serving, "lagging": lagging}
    return {
        "schedulers": [{"id": s.id, "releases": dict(s.releases), "at": s.at} for s in schedulers],
        "releases": releases,
    }


class ServedPublisher:
    """Keeps this scheduler's record current on its lease. ``run_once`` writes when what is
    served changed and the last write is ``min_interval_s`` old, and keeps the lease alive
    every ttl/3; ``run`` (a supervised task) repeats it, woken by :meth:`changed`."""

    def __init__(
        self,
        kv: KeyValueStore,
        prefix: str,
        scheduler: str,
        served: Callable[[], Mapping[str, int]],
        ttl_s: int,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.records = served_records(kv, prefix)
        self.id = scheduler
        self.served = served
        self.ttl_s = ttl_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.wall = wall
        self.lease = 0
        self.published: Mapping[str, int] | None = None
        self.written_at: float | None = None
        self.kept_at = 0.0
        self._wake = asyncio.Event()

    @property
    def keepalive_s(self) -> float:
        return self.ttl_s / 3

    def changed(self) -> None:
        """The snapshot changed: look again now (the write itself waits its interval)."""
        self._wake.set()

    def due_in(self) -> float:
        """Seconds until ``run_once`` has something to do."""
        now = self.clock()
        wait = max(0.0, self.kept_at + self.keepalive_s - now)
        if self.written_at is not None and dict(self.served()) != self.published:
            wait = min(wait, max(0.0, self.written_at + self.min_interval_s - now))
        return wait

    async def run_once(self) -> str:
        now = self.clock()
        if not self.lease:
            self.lease = await self.kv.grant_lease(self.ttl_s)
            self.kept_at = now
            self.published = None
            self.written_at = None
        elif now - self.kept_at >= self.keepalive_s:
            try:
                await self.kv.keepalive(self.lease)
                self.kept_at = now
            except LeaseNotFound:
                self.lease = 0  # expired while away: grant and publish again
                return await self.run_once()
        served = dict(self.served())
        if served == self.published:
            return "unchanged"
        if self.written_at is not None and now - self.written_at < self.min_interval_s:
            return "changed: written within the interval, waiting"
        record = ServedReleases(self.id, MappingProxyType(served), self.wall())
        try:
            await self.records.put(record, lease=self.lease)
        except LeaseNotFound:
            self.lease = 0
            return await self.run_once()
        self.published = served
        self.written_at = now
        return f"published {len(served)} release revisions"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.run_once()
                timeout = self.due_in()
            except ImctlError as exc:  # the store away: try again shortly
                log.warning("served releases: publish failed: %s", exc)
                timeout = self.min_interval_s
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        await self.close()

    async def close(self) -> None:
        """Revoke the lease, shielded: the record goes now, not a TTL later."""
        if not self.lease:
            return
        lease, self.lease = self.lease, 0
        try:
            await asyncio.shield(self.kv.revoke_lease(lease))
        except (ImctlError, asyncio.CancelledError) as exc:
            log.warning("could not revoke lease %d: %s", lease, exc)
