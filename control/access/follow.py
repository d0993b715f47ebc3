"""Connections follow the releases: the node mirrors the releases and, when a change moves
users out of its track (a percent lowered, a rollback), tells the sessions now outside to
reconnect, at the drain's bounded rate with its jitter, so they ask the scheduler again. A
rollback's moves are spread over its ``rollback_over_s`` (the node's drain window when
0), never faster than ``max_rate``. When a promote makes another target the stable
version, a node of the old stable fleet retires (drains). The decisions are
control/gray/track.py's and control/gray/stable.py's; this module only walks them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from control.access.drain import drain_schedule, follow
from control.access.session import Session
from control.gray.model import Release, RuleSet
from control.gray.stable import CURRENT, Stable, retiring
from control.gray.track import MoveReason, NodeTrack, merged, misplaced, serving

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
        retire: Callable[[Stable], object],
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
        self.stable: Stable | None = None  # the stable record (None: no promote yet)
        self.retired: Stable | None = None  # the stable record this node retired under
        self.moving: set[str] = set()  # conns in a walk, told or waiting for their turn
        self._walk: asyncio.Task[Any] | None = None

    def out(self, session: Session) -> bool:
        """The session is no longer on this node's track (pure, over the latest state)."""
        return misplaced(self.rules, self.on, session.context())

    def seen(self, stored: Mapping[str, Release]) -> None:
        releases = merged(self.config_releases, stored)
        self.releases = {r.name: r for r in releases}
        self.rules = RuleSet(releases)
        self.on = serving(releases, self.node)
        if self._retires():
            return
        if not self.active():
            return  # draining already: every session is told anyway
        leaving = [s for s in self.sessions() if s.conn not in self.moving and self.out(s)]
        if leaving:
            window = self.window_s
            if self.on is not None and self.on.state == "rolled_back" and self.on.rollback_over_s:
                window = self.on.rollback_over_s
            self.moving.update(s.conn for s in leaving)
            self._walk = self.spawn("follow", self._chain(self._walk, leaving, window))

    def stable_seen(self, records: Mapping[str, Stable]) -> None:
        """The stable record changed (a promote handed the stable track over)."""
        self.stable = records.get(CURRENT)
        self._retires()

    def _retires(self) -> bool:
        """Retire (once per hand-over) when the stable target leaves this node out."""
        target = None if self.stable is None else self.stable.target
        if not retiring(target, self.on, self.node.pool, self.node.version):
            return False
        if self.retired != self.stable and self.active():
            assert self.stable is not None  # retiring() holds only with a target
            self.retired = self.stable
            log.warning("release %s promoted: this node retires", self.stable.release)
            self.retire(self.stable)
        return True

    async def _chain(
        self, before: asyncio.Task[Any] | None, leaving: list[Session], window_s: float
    ) -> int:
        if before is not None and not before.done():
            await asyncio.wait([before])
        try:
            return await self.walk(leaving, window_s)
        finally:
            self.moving.difference_update(s.conn for s in leaving)

    async def walk(self, leaving: list[Session], window_s: float | None = None) -> int:
        """Tell ``leaving`` to reconnect over ``window_s`` (the node's drain window when
        None) at no more than ``max_rate``: the rate wins; the number told."""
        reason: MoveReason = "rollback"
        window = self.window_s if window_s is None else window_s
        plan = drain_schedule(leaving, window, self.max_rate)
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
