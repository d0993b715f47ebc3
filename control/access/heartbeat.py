"""Heartbeat batching: the sessions touched since the last flush go to presence in one call
per shard, every ``presence.flush_s``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from control.access.metrics import AccessMetrics
from control.access.session import Roster, Session
from control.common.errors import BackendUnavailable
from control.common.tasks import pause
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence

log = logging.getLogger(__name__)

Touch = tuple[str, str, str]  # (uid, device, conn)


class HeartbeatBatch:
    def __init__(
        self,
        node_id: str,
        presence: PresenceCluster,
        roster: Roster,
        entry: Callable[[Session], Presence],
        metrics: AccessMetrics,
        flush_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.presence = presence
        self.roster = roster
        self.entry = entry
        self.metrics = metrics
        self.flush_s = flush_s
        self.pending: set[Touch] = set()
        # When presence last took every waiting heartbeat: the lag gauge is read at scrape
        # time, so touch() (every ping) pays nothing for it.
        self.clock = clock
        self.flushed_at = clock()
        metrics.heartbeat_lag.set_function(self.lag)

    def lag(self) -> float:
        return self.clock() - self.flushed_at if self.pending else 0.0

    def touch(self, session: Session) -> None:
        self.pending.add((session.uid, session.device, session.conn))

    def discard(self, session: Session) -> None:
        self.pending.discard((session.uid, session.device, session.conn))

    async def flush_once(self) -> int:
        """Send every heartbeat since the last flush in one call per shard; log in again
        the connections this node still holds whose entries are gone (a shard restarted
        and lost them). Returns how many entries were re-asserted."""
        if not self.pending:
            self.flushed_at = self.clock()
            return 0
        batch, self.pending = self.pending, set()
        taken, started = self.clock(), time.perf_counter()
        try:
            missing = await self.presence.touch(batch)
        except BackendUnavailable as exc:
            log.warning(
                "%s: heartbeat flush failed (%s); keeping %d", self.node_id, exc, len(batch)
            )
            self.pending |= batch
            return 0
        self.metrics.flush.observe(time.perf_counter() - started)
        # Whatever waits now was touched after this batch was taken.
        self.flushed_at = taken
        sessions = self.roster.sessions
        alive = [sessions[conn] for _uid, _device, conn in missing if conn in sessions]
        if not alive:
            return 0
        log.warning(
            "%s: %d live connections had no presence entry; logging them in again",
            self.node_id,
            len(alive),
        )
        results = await asyncio.gather(
            *(self.presence.online(self.entry(s)) for s in alive), return_exceptions=True
        )
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.flush_s)
            await self.flush_once()
