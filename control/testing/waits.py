"""Waiting for an event: every wait is bounded in time and polls at a fixed period, so a
wait for something that never happens fails with a sentence naming what it waited for."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

POLL_S = 0.05  # the period of every wait below, unless a caller asks for another


async def until(
    cond: Callable[[], object | Awaitable[object]],
    within: float = 5.0,
    what: str = "condition",
    every: float = POLL_S,
) -> float:
    """Await ``cond()`` (a plain or an async callable) until it is truthy; return how long it
    took. AssertionError naming ``what`` if it is still falsy after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return loop.time() - start
        if loop.time() - start > within:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(every)


def until_sync(
    cond: Callable[[], object], within: float = 5.0, what: str = "condition", every: float = POLL_S
) -> float:
    """The blocking twin of :func:`until`, for code outside an event loop."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(every)
    return time.monotonic() - start


def calls_done(obj: Any, method: str) -> list[tuple[Any, ...]]:
    """Wrap the async method ``obj.<method>`` (on this instance only) so that the positional
    arguments of every call it has finished are appended to the list returned: the event
    a test waits for when the effect it needs is that call having run."""
    real = getattr(obj, method)
    done: list[tuple[Any, ...]] = []

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real(*args, **kwargs)
        finally:
            done.append(args)

    setattr(obj, method, wrapper)
    return done
