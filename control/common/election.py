"""Leader election on the key-value store: whoever creates the key on its lease leads until
the lease lapses. One step per call (``run_once``) so tests drive it directly."""

from __future__ import annotations

import logging

from control.common.errors import BackendUnavailable, LeaseNotFound
from control.common.kv import KeyValueStore

log = logging.getLogger(__name__)


class Election:
    def __init__(self, kv: KeyValueStore, key: str, identity: str, ttl: int) -> None:
        self.kv = kv
        self.key = key
        self.identity = identity
        self.ttl = ttl
        self.lease: int | None = None
        self.leader = False

    @property
    def interval(self) -> float:
        return self.ttl / 3

    async def run_once(self) -> str:
        if self.leader and self.lease is not None:
            try:
                await self.kv.keepalive(self.lease)
                return "leader"
            except LeaseNotFound:
                self._lose("lease lost")
        entry = await self.kv.get(self.key)
        if entry is not None:
            return f"follower of {entry.value.decode(errors='replace')}"
        self.lease = await self.kv.grant_lease(self.ttl)
        ok, _ = await self.kv.compare_and_swap(
            self.key, self.identity.encode(), 0, lease=self.lease
        )
        if not ok:
            await self.kv.revoke_lease(self.lease)
            self.lease = None
            return "follower (lost the race)"
        self.leader = True
        log.warning("%s became leader (%s)", self.identity, self.key)
        return "became leader"

    def _lose(self, why: str) -> None:
        if self.leader:
            log.warning("%s is no longer leader: %s", self.identity, why)
        self.leader = False
        self.lease = None

    def unavailable(self, exc: BackendUnavailable) -> None:
        """The store is unreachable: a leader that cannot renew must stop acting."""
        self._lose(f"store unavailable ({exc})")

    async def resign(self) -> None:
        if self.leader and self.lease is not None:
            try:
                await self.kv.revoke_lease(self.lease)
            except BackendUnavailable as exc:
                log.warning("resign: %s", exc)
        self._lose("resigned")
