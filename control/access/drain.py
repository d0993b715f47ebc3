"""Drain: a pure schedule (who is told to reconnect when), a small walker that follows it,
and this node's drain request in the store, parsed and deduplicated."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from control.common.registry import DrainRequest

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Turn(Generic[T]):
    #: seconds after the drain starts when this session is told to reconnect
    at: float
    session: T


@dataclass(frozen=True)
class DrainPlan(Generic[T]):
    """When each session is told to reconnect: one every ``gap`` seconds."""

    gap: float
    turns: tuple[Turn[T], ...]

    @property
    def jitter_max_s(self) -> float:
        """A client's reconnect is spread inside its own turn (capped at a second)."""
        return min(self.gap, 1.0)

    @property
    def ends_at(self) -> float:
        """When the last session is told (0 for none)."""
        return self.turns[-1].at if self.turns else 0.0


def drain_schedule(sessions: Sequence[T], over_s: float, max_rate: float) -> DrainPlan[T]:
    """Spread ``sessions`` (in the order given) over ``over_s`` seconds, at no more than
    ``max_rate`` per second: the i-th is told at ``i * gap``. Everyone is told within the
    window unless the rate forbids it; then the rate wins and the drain takes longer."""
    if max_rate <= 0:
        raise ValueError(f"max_rate must be positive, not {max_rate!r}")
    count = len(sessions)
    gap = max(over_s / count if count else 0.0, 1.0 / max_rate)
    return DrainPlan(gap, tuple(Turn(i * gap, s) for i, s in enumerate(sessions)))


Tell = Callable[[T, float], Awaitable[bool]]
Close = Callable[[T], Awaitable[None]]


async def follow(
    plan: DrainPlan[T],
    tell: Tell[T],
    close: Close[T],
    grace_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> int:
    """Walk ``plan``: at each turn ``tell(session, jitter_s)`` (False: it is gone, skip
    it), then ``close`` it ``grace_s + jitter_s`` later. Returns once every told session
    is closed; the number told. The closes are this walk's own tasks: cancelling the walk
    cancels them."""
    draw = (rng or random).uniform
    start = clock()
    told = 0

    async def close_later(session: T, after: float) -> None:
        await sleep(after)
        await close(session)

    async with asyncio.TaskGroup() as closers:
        for turn in plan.turns:
            delay = start + turn.at - clock()
            if delay > 0:
                await sleep(delay)
            # The frame's jitter spreads each client's reconnect inside its own turn.
            jitter = int(draw(0, plan.jitter_max_s) * 1000) / 1000
            if not await tell(turn.session, jitter):
                continue
            told += 1
            closers.create_task(close_later(turn.session, grace_s + jitter))
    return told


class DrainOrders:
    """This node's drain request (mirrored from ``<prefix>/drain/<node>`` by the record
    store, which ignores a malformed value with one warning) compared as a record, so
    seeing the same request again (a re-listing, a rewrite of the same value) never
    restarts a drain."""

    def __init__(
        self,
        node_id: str,
        on_drain: Callable[[DrainRequest], object],
        on_undrain: Callable[[], object],
    ) -> None:
        self.node_id = node_id
        self.on_drain = on_drain
        self.on_undrain = on_undrain
        self.requested: DrainRequest | None = None

    def seen(self, requests: Mapping[str, DrainRequest]) -> None:
        """Drain when a new request for this node appears, take clients again when it
        goes."""
        wanted = requests.get(self.node_id)
        if wanted == self.requested:
            return
        self.requested = wanted
        if wanted is None:
            self.on_undrain()
        else:
            self.on_drain(wanted)
