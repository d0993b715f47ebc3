"""Leader election on the key-value store: whoever creates the key on its lease leads until
the lease lapses. One step per call (``run_once``) so tests drive it directly.

Timing (``ttl`` is the only input): a leader renews every ``ttl / 3``; a follower looks at
the key as often, so it takes over at most ``ttl + ttl / 3`` after a leader dies. While the
store is unreachable a step is retried every ``retry_s`` (at most 0.5 s), not every
``ttl / 3``, and a leader that lost contact keeps its lease id: when the store answers
again and the lease is still alive (etcd extends every lease by its TTL when it restarts),
the key is still its own and it leads again at that first step. Only when the lease did
lapse (an outage longer than ``ttl`` seen from etcd's side) does it wait for the key to
expire like any follower. So after an outage: leading again within ``retry_s`` + the
client's reconnect time, or, when the old lease lapsed, within ``ttl`` more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from control.common.errors import BackendUnavailable, LeaseNotFound
from control.common.kv import KeyValueStore
from control.common.records import RecordStore, RecordType

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Leader:
    """The election key's value: who leads (plain text, as ``etcdctl get`` shows it)."""

    identity: str

    def to_bytes(self) -> bytes:
        return self.identity.encode()

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = "") -> Leader:
        return cls(raw.decode(errors="replace"))


LEADERS: RecordType[Leader] = RecordType("leader key", Leader.from_bytes, Leader.to_bytes)


class Election:
    def __init__(self, kv: KeyValueStore, key: str, identity: str, ttl: int) -> None:
        self.kv = kv
        self.key = key  # e.g. Keys(prefix).leader
        directory, _, self._name = key.rpartition("/")
        self.store = RecordStore(kv, directory + "/", LEADERS)
        self.identity = identity
        self.ttl = ttl
        self.lease: int | None = None
        self.leader = False

    @property
    def interval(self) -> float:
        """Between steps while the store answers: renew (leader) or look (follower)."""
        return self.ttl / 3

    @property
    def retry_s(self) -> float:
        """Between steps while the store is unreachable: short, so it leads again soon
        after the store is back."""
        return min(0.5, self.interval)

    async def run_once(self) -> str:
        if self.lease is not None:
            try:
                await self.kv.keepalive(self.lease)
            except LeaseNotFound:
                self._lose("lease lost")
            else:
                if self.leader:
                    return "leader"
                # Stepped down when the store was unreachable, yet the lease lived through
                # it: the key, if still on that lease, is ours.
                entry = await self.store.get(self._name)
                if entry is not None and entry.lease == self.lease:
                    self.leader = True
                    log.warning("%s leads again (its lease outlived the outage)", self.identity)
                    return "leader again"
                await self._drop_lease()
        entry = await self.store.get(self._name)
        if entry is not None:
            leader = entry.record.identity if entry.record is not None else "?"
            return f"follower of {leader}"
        self.lease = await self.kv.grant_lease(self.ttl)
        ok, _ = await self.store.cas(Leader(self.identity), 0, lease=self.lease, name=self._name)
        if not ok:
            await self._drop_lease()
            return "follower (lost the race)"
        self.leader = True
        log.warning("%s became leader (%s)", self.identity, self.key)
        return "became leader"

    async def _drop_lease(self) -> None:
        if self.lease is not None:
            lease, self.lease = self.lease, None
            await self.kv.revoke_lease(lease)

    def _lose(self, why: str, keep_lease: bool = False) -> None:
        if self.leader:
            log.warning("%s is no longer leader: %s", self.identity, why)
        self.leader = False
        if not keep_lease:
            self.lease = None

    def unavailable(self, exc: BackendUnavailable) -> None:
        """The store is unreachable: a leader that cannot renew must stop acting. It keeps
        the lease id, to lead again at once if the lease outlives the outage."""
        self._lose(f"store unavailable ({exc})", keep_lease=True)

    async def resign(self) -> None:
        if self.lease is not None:
            try:
                await self.kv.revoke_lease(self.lease)
            except BackendUnavailable as exc:
                log.warning("resign: %s", exc)
        self._lose("resigned")
