"""Rebalance, the node's side: follow the round the leader controller planned
(``<prefix>/rebalance-plan/cluster``, see ``common/rebalance.py``) and shed this node's
slice by the drain's reconnect frames: ``quota`` sessions at most, never faster than the
slice's rate, only inside the round's window."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from control.access.session import Session
from control.common.rebalance import NAME, SPACING, RebalancePlan
from control.gray.track import MoveReason

log = logging.getLogger(__name__)

Tell = Callable[[Session, float, MoveReason], Awaitable[bool]]
Close = Callable[[Session], Awaitable[None]]


class Shedder:
    """Sees every plan (``seen``, from the plan mirror); a new one replaces the walk of the
    old, so this node sheds for one round at a time."""

    def __init__(
        self,
        node_id: str,
        sessions: Callable[[], Iterable[Session]],
        *,
        max_rate: float,
        grace_s: float,
        tell: Tell,
        close: Close,
        spawn: Callable[[str, Coroutine[Any, Any, int]], asyncio.Task[Any]],
        active: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.sessions = sessions
        self.max_rate, self.grace_s = max_rate, grace_s
        self.tell, self.close, self.spawn, self.active = tell, close, spawn, active
        self.clock, self.wall = clock, wall
        self.rng = rng or random.Random()
        self.plan: RebalancePlan | None = None
        self.told = 0  # over every round, for tests and logs
        self._walk: asyncio.Task[Any] | None = None

    def seen(self, plans: Mapping[str, RebalancePlan]) -> None:
        plan = plans.get(NAME)
        if plan == self.plan:
            return  # a re-listing never restarts a round
        self.plan = plan
        if self._walk is not None and not self._walk.done():
            self._walk.cancel()
        if plan is not None and self.node_id in plan.slices:
            self._walk = self.spawn("rebalance", self.walk(plan))

    async def walk(self, plan: RebalancePlan) -> int:
        """Shed this node's slice of ``plan``; the number told."""
        piece = plan.slices[self.node_id]
        # The window is wall-clock (the controller's); the walk runs on this node's clock.
        offset = self.clock() - self.wall()
        start, end = plan.start + offset, plan.end + offset
        gap = SPACING / min(piece.rate, self.max_rate)
        if start > self.clock():
            await asyncio.sleep(start - self.clock())
        chosen = list(self.sessions())
        self.rng.shuffle(chosen)
        told = 0
        log.warning(
            "%s: rebalance round %d: shedding %d at %g/s",
            self.node_id,
            plan.round,
            piece.quota,
            piece.rate,
        )
        async with asyncio.TaskGroup() as closers:
            next_at = self.clock()
            for session in chosen:
                if told >= piece.quota or not self.active():
                    break
                if next_at > self.clock():
                    await asyncio.sleep(next_at - self.clock())
                if self.clock() > end:
                    break
                jitter = int(self.rng.uniform(0, min(gap, 1.0)) * 1000) / 1000
                if not await self.tell(session, jitter, "rebalance"):
                    continue  # gone meanwhile: its turn goes to the next one
                told += 1
                # From when it went out, not when it was due: a late frame never lets the
                # next one catch up, so no 1 s window holds more than the rate.
                next_at = self.clock() + gap
                closers.create_task(self._close_later(session, self.grace_s + jitter))
        self.told += told
        log.warning("%s: rebalance round %d done (%d told)", self.node_id, plan.round, told)
        return told

    async def _close_later(self, session: Session, after: float) -> None:
        await asyncio.sleep(after)
        await self.close(session)
