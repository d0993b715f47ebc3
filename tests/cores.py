"""Message cores for tests: one with bugs, to show a core's failure costs a frame, not a
connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control.access.core import CoreContext, SessionView


class FlakyCore:
    types = frozenset({"boom", "echo", "nan_push", "nan_send"})

    def __init__(self, context: CoreContext) -> None:
        self.ctx = context

    async def on_open(self, session: SessionView) -> None:
        if session.uid == "cursed":
            raise RuntimeError("on_open broke")

    async def on_message(self, session: SessionView, frame: Mapping[str, Any]) -> None:
        t = frame["t"]
        if t == "boom":
            raise RuntimeError("a bug in the core")
        if t == "nan_push":  # the push API refuses a payload no client could read
            await self.ctx.push([session.uid], {"t": "x", "v": float("nan")})
        if t == "nan_send":  # so does a session's send, and says so
            sent = await session.send({"t": "x", "v": float("nan")})
            await session.send({"t": "sent", "ok": sent})
        if t == "echo":
            await session.send({"t": "echo", "body": frame.get("body")})

    async def on_close(self, session: SessionView, reason: str) -> None:
        return None
