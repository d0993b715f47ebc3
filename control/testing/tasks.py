"""Asyncio tasks left behind: which are still pending, and how to name one in a failure."""

from __future__ import annotations

import asyncio
from typing import Any


def leftover_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """The tasks of ``loop`` still pending, other than the one asking."""
    current = asyncio.current_task(loop)
    return [t for t in asyncio.all_tasks(loop) if t is not current and not t.done()]


def describe_task(task: asyncio.Task[Any]) -> str:
    """A task's name and the coroutine it runs, for a failure message."""
    coro = task.get_coro()
    code = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()} ({code})"
