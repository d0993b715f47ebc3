"""Supervised background tasks: a crash or an early exit stops the process cleanly and
says which task; shutdown is bounded even for a task that ignores it."""

from __future__ import annotations

import asyncio

import pytest

from control.common.tasks import Supervisor, pause


async def forever(stop: asyncio.Event) -> None:
    await stop.wait()


async def test_a_crash_fails_the_supervisor_and_stops_the_rest() -> None:
    sup = Supervisor("t")

    async def crash(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    quiet = sup.spawn("quiet", forever)
    sup.spawn("crash", crash)
    await asyncio.wait_for(sup.failed.wait(), 2)
    assert sup.failure == "task crash crashed" and sup.stop.is_set()
    await asyncio.wait_for(quiet, 2)  # the others see stop and end
    assert sup.alive() == {"quiet": False, "crash": False}
    await sup.close(timeout=1)


async def test_an_early_exit_is_a_failure_but_a_stop_is_not() -> None:
    sup = Supervisor("t")

    async def leaves(stop: asyncio.Event) -> None:
        return None

    sup.spawn("leaves", leaves)
    await asyncio.wait_for(sup.failed.wait(), 2)
    assert sup.failure == "task leaves exited"

    calm = Supervisor("calm")
    calm.spawn("a", forever)
    await asyncio.sleep(0)
    assert calm.alive() == {"a": True}
    await calm.close(timeout=1)
    assert not calm.failed.is_set() and calm.failure is None


async def test_close_cancels_a_task_that_ignores_stop() -> None:
    sup = Supervisor("t")
    cancelled = asyncio.Event()

    async def stubborn(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sup.spawn("stubborn", stubborn)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sup.close(timeout=0.2)
    assert cancelled.is_set() and loop.time() - started < 2
    assert not sup.failed.is_set()


async def test_names_are_unique_and_pause_ends_early_on_stop() -> None:
    sup = Supervisor("t")
    sup.spawn("a", forever)
    with pytest.raises(ValueError, match="already running"):
        sup.spawn("a", forever)
    loop = asyncio.get_running_loop()
    started = loop.time()
    asyncio.get_running_loop().call_later(0.05, sup.stop.set)
    await pause(sup.stop, 30)
    assert loop.time() - started < 2
    await sup.close(timeout=1)


async def test_an_errand_failure_is_logged_not_fatal_and_close_cancels_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One-shot tasks (a drain, a remote kick) run under the supervisor's name: a failed
    one is logged but does not stop the process; close() cancels those still running."""
    sup = Supervisor("t")
    sup.spawn("quiet", forever)

    async def boom() -> None:
        raise RuntimeError("boom")

    failed = sup.errand("kick", boom())
    assert failed.get_name() == "t:kick"
    assert await asyncio.wait_for(failed, 2) is None
    assert "t: kick failed" in caplog.text
    assert not sup.failed.is_set() and sup.alive() == {"quiet": True}
    slow = sup.errand("drain", asyncio.sleep(60))
    await sup.close(timeout=1)
    assert slow.cancelled()
