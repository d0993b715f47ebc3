"""Named, supervised background tasks (kopf's guarded tasks, arq's bounded shutdown).

Each task gets the supervisor's ``stop`` event. A task that exits or fails while the
supervisor is running is logged and stops the whole process cleanly (``failed`` is set),
instead of vanishing while the process pretends to be healthy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

Loop = Callable[[asyncio.Event], Awaitable[None]]
T = TypeVar("T")


class Supervisor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stop = asyncio.Event()
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._errands: set[asyncio.Task[Any]] = set()

    def spawn(self, name: str, loop: Loop) -> asyncio.Task[None]:
        if name in self._tasks:
            raise ValueError(f"task {name!r} already running")
        task = asyncio.create_task(self._guard(name, loop), name=f"{self.name}:{name}")
        self._tasks[name] = task
        return task

    def errand(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T | None]:
        """A one-shot task (a drain, a remote kick) under this supervisor: named, a failure
        logged but not fatal (the loops are what keep the process alive), cancelled by
        ``close`` when still running."""
        task = asyncio.create_task(self._errand(name, work), name=f"{self.name}:{name}")
        self._errands.add(task)
        task.add_done_callback(self._errands.discard)
        return task

    async def _errand(self, name: str, work: Coroutine[Any, Any, T]) -> T | None:
        try:
            return await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: %s failed", self.name, name)
            return None

    async def _guard(self, name: str, loop: Loop) -> None:
        try:
            await loop(self.stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: task %s crashed", self.name, name)
            self._fail(f"task {name} crashed")
            return
        if not self.stop.is_set():
            log.error("%s: task %s exited unexpectedly", self.name, name)
            self._fail(f"task {name} exited")

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        self.failed.set()
        self.stop.set()

    def alive(self) -> dict[str, bool]:
        return {name: not task.done() for name, task in self._tasks.items()}

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Ask every task to stop, wait at most ``timeout``, then cancel the rest."""
        self.stop.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning(
                    "%s: task %s did not stop in %.1fs; cancelling",
                    self.name,
                    task.get_name(),
                    timeout,
                )
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        errands = list(self._errands)
        for task in errands:
            task.cancel()
        if errands:
            await asyncio.wait(errands, timeout=1.0)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
