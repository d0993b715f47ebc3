"""The drain schedule is a pure function: who is told to reconnect when. Spread over the
window, never above the rate, everyone told by the end; and the walker follows it on an
injected clock, closing each told session grace + jitter later."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.access.drain import DrainOrders, drain_schedule, follow
from control.common.kv.embedded import EmbeddedKV
from control.common.registry import DrainRequest, drain_requests

T = TypeVar("T")


def test_sessions_are_spread_evenly_over_the_window() -> None:
    plan = drain_schedule(list(range(100)), over_s=10.0, max_rate=500.0)
    assert plan.gap == pytest.approx(0.1)
    assert [t.session for t in plan.turns] == list(range(100))  # each once, in order
    assert [t.at for t in plan.turns] == pytest.approx([i * 0.1 for i in range(100)])
    assert plan.ends_at == pytest.approx(9.9)
    assert plan.jitter_max_s == pytest.approx(0.1)


def test_the_rate_wins_over_the_window() -> None:
    # 1,000 sessions in 1 s would be 1,000/s: the cap of 100/s stretches it to ~10 s.
    plan = drain_schedule(list(range(1000)), over_s=1.0, max_rate=100.0)
    assert plan.gap == pytest.approx(0.01)
    assert plan.ends_at == pytest.approx(9.99)


def test_no_sessions_is_an_empty_plan() -> None:
    plan = drain_schedule([], over_s=30.0, max_rate=500.0)
    assert plan.turns == () and plan.ends_at == 0.0


def test_one_session_is_told_at_once() -> None:
    plan = drain_schedule(["only"], over_s=30.0, max_rate=500.0)
    assert [(t.at, t.session) for t in plan.turns] == [(0.0, "only")]
    assert plan.jitter_max_s == 1.0  # a gap of 30 s: jitter capped at a second


def test_a_rate_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="max_rate"):
        drain_schedule([1], over_s=1.0, max_rate=0.0)


@given(
    count=st.integers(min_value=0, max_value=3000),
    over_s=st.floats(min_value=0.0, max_value=3600.0),
    max_rate=st.floats(min_value=0.01, max_value=10_000.0),
)
def test_never_above_the_rate_and_everyone_told_by_the_end(
    count: int, over_s: float, max_rate: float
) -> None:
    plan = drain_schedule(list(range(count)), over_s, max_rate)
    assert [t.session for t in plan.turns] == list(range(count))
    ats = [t.at for t in plan.turns]
    assert ats == sorted(ats) and (not ats or ats[0] == 0.0)
    # Never above the rate: consecutive turns are at least 1/max_rate apart, so any second
    # holds at most ceil(max_rate) of them.
    for a, b in itertools.pairwise(ats):
        assert b - a >= (1.0 / max_rate) * (1 - 1e-9)
    if count:
        window = [a for a in ats if a < ats[0] + 1.0]
        assert len(window) <= math.ceil(max_rate) + 1
    # Everyone by the end of the window, whenever the rate allows it; else as the rate
    # allows and no later.
    if count and count / max(over_s, 1e-12) <= max_rate:
        assert plan.ends_at <= over_s * (1 + 1e-9)
    elif count:
        assert plan.ends_at == pytest.approx((count - 1) / max_rate)


class FakeTime:
    """An injected clock and a sleep that waits for it: ``run`` moves time straight to the
    next sleeper's wake-up whenever everything else is waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._seq, future))
        await future

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(work)
        for _ in range(10_000):  # bounded: a walk of a few sessions takes a few dozen steps
            for _ in range(5):
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            if self._sleepers:
                wake, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                future.set_result(None)
        task.cancel()
        raise AssertionError("the walk never finished")


async def test_the_walker_tells_on_time_and_closes_grace_plus_jitter_later() -> None:
    time_ = FakeTime()
    plan = drain_schedule(["a", "b", "gone", "c"], over_s=4.0, max_rate=500.0)
    told: list[tuple[float, str, float]] = []
    closed: dict[str, float] = {}

    async def tell(session: str, jitter_s: float) -> bool:
        if session == "gone":
            return False
        told.append((time_.now, session, jitter_s))
        return True

    async def close(session: str) -> None:
        closed[session] = time_.now

    count = await time_.run(
        follow(plan, tell, close, 5.0, time_.clock, time_.sleep, random.Random(7))
    )
    assert count == 3
    assert [(at, s) for at, s, _ in told] == [(0.0, "a"), (1.0, "b"), (3.0, "c")]
    assert all(0.0 <= j <= plan.jitter_max_s for _, _, j in told)
    assert len({j for _, _, j in told}) > 1  # spread inside the turn, not one delay
    assert "gone" not in closed
    assert closed == {s: pytest.approx(at + 5.0 + jitter) for at, s, jitter in told}


async def test_cancelling_the_walk_cancels_its_closes() -> None:
    plan = drain_schedule(["a"], over_s=1.0, max_rate=500.0)
    closed: list[str] = []

    async def tell(session: str, jitter_s: float) -> bool:
        return True

    async def close(session: str) -> None:
        closed.append(session)

    walk = asyncio.create_task(follow(plan, tell, close, 30.0, asyncio.get_running_loop().time))
    await asyncio.sleep(0.05)
    walk.cancel()
    with pytest.raises(asyncio.CancelledError):
        await walk
    assert closed == []


def test_drain_orders_parse_ours_and_ignore_repeats() -> None:
    drains: list[float] = []
    undrains: list[None] = []
    orders = DrainOrders("n0", lambda r: drains.append(r.over_s), lambda: undrains.append(None))
    # The node's mirror of its own drain key parses (the record store does the parsing).
    parse = drain_requests(EmbeddedKV(), "/imctl").mirror(orders.seen, only="n0").parse
    raw = b'{"over_s": 3, "at": 1.0, "by": "me"}'
    assert parse("/imctl/drain/n1", raw) is None  # another node's
    request = parse("/imctl/drain/n0", raw)
    assert isinstance(request, DrainRequest) and request.over_s == 3
    orders.seen({"n0": request})
    orders.seen({"n0": request})  # seen again: no second drain
    assert drains == [3] and undrains == []
    orders.seen({})
    assert undrains == [None]
