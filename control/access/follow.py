"""Connections follow the releases: the node mirrors the releases and, when a change moves
users out of its track (a percent lowered, a rollback), tells the sessions now outside to
reconnect, at the drain's bounded rate with its jitter, so they ask the scheduler again.
When a release is promoted, a node its target does not select retires (drains). The
decisions are control/gray/track.py's; this module only walks them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from control.access.drain import drain_schedule, follow
from control.access.session import Session
from control.gray.model import Release, RuleSet
from control.gray.track import MoveReason, NodeTrack, merged, misplaced, promoted_away, serving

log = logging.getLogger(__name__)

#: tell(session, jitter_s, reason) -> False when it is gone; close(session)
Tell = Callable[[Session, float, MoveReason], Awaitable[bool]]
Close = Callable[[Session], Awaitable[None]]


class ReleaseFollower:
    """Sees every release change (``seen``, from the release mirror) and walks the moves
    it calls for. Walks run one after another, never two at once, so the node's reconnect
    rate stays within ``max_rate``; each session is judged again at its turn against the
    latest releases, so a change undone before its turn moves it not."""

    def __init__(
        self,
        node: NodeTrack,
        config_releases: Iterable[Release],
        sessions: Callable[[], Iterable[Session]],
        *,
        window_s: float,
        max_rate: float,
        grace_s: float,
        tell: Tell,
        close: Close,
        retire: Callable[[Release], object],
        spawn: Callable[[str, Coroutine[Any, Any, int]], asyncio.Task[Any]],
        clock: Callable[[], float],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node = node
        self.config_releases = tuple(config_releases)
        self.sessions = sessions
        self.window_s, self.max_rate, self.grace_s = window_s, max_rate, grace_s
        self.tell, self.close, self.retire = tell, close, retire
        self.spawn, self.clock, self.active = spawn, clock, active
        self.releases: dict[str, Release] = {}
        self.rules = RuleSet(())
        self.on: Release | None = None
        self.synced = False
        self.moving: set[str] = set()  # conns in a walk, told or waiting for their turn
        self._walk: asyncio.Task[Any] | None = None

    def out(self, session: Session) -> bool:
        """The session is no longer on this node's track (pure, over the latest state)."""
        return misplaced(self.rules, self.on, session.context())

    def seen(self, stored: Mapping[str, Release]) -> None:
        releases = merged(self.config_releases, stored)
        now = {r.name: r for r in releases}
        promoted = promoted_away(self.releases, now, self.node) if self.synced else None
        self.releases, self.synced = now, True
        self.rules = RuleSet(releases)
        self.on = serving(releases, self.node)
        if promoted is not None:
            log.warning("release %s promoted: this node retires", promoted.name)
            self.retire(promoted)
            return
        if not self.active():
            return  # draining already: every session is told anyway
        leaving = [s for s in self.sessions() if s.conn not in self.moving and self.out(s)]
        if leaving:
            self.moving.update(s.conn for s in leaving)
            self._walk = self.spawn("follow", self._chain(self._walk, leaving))

    async def _chain(self, before: asyncio.Task[Any] | None, leaving: list[Session]) -> int:
        if before is not None and not before.done():
            await asyncio.wait([before])
        try:
            return await self.walk(leaving)
        finally:
            self.moving.difference_update(s.conn for s in leaving)

    async def walk(self, leaving: list[Session]) -> int:
        """Tell ``leaving`` to reconnect over the window at the bounded rate; the number told."""
        reason: MoveReason = "rollback"
        plan = drain_schedule(leaving, self.window_s, self.max_rate)
        log.warning(
            "%d connections leave this node's track over %.0fs at most %g/s",
            len(leaving),
            plan.ends_at,
            self.max_rate,
        )

        async def tell(session: Session, jitter_s: float) -> bool:
            if not self.active() or not self.out(session):
                return False
            return await self.tell(session, jitter_s, reason)

        return await follow(plan, tell, self.close, self.grace_s, self.clock)
