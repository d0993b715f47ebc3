"""The reference message core: ``echo`` frames come back, ``msg`` frames go to another user
through the push API, and the sender gets an ``ack`` saying what happened."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control.access.core import CoreContext, SessionView

MAX_BODY = 16_384


class EchoCore:
    types = frozenset({"echo", "msg"})

    def __init__(self, context: CoreContext) -> None:
        self.ctx = context

    async def on_open(self, session: SessionView) -> None:
        return None

    async def on_message(self, session: SessionView, frame: Mapping[str, Any]) -> None:
        if frame["t"] == "echo":
            await session.send({"t": "echo", "body": frame.get("body")})
            return
        to, body, ref = frame.get("to"), frame.get("body"), frame.get("id")
        if not isinstance(to, str) or not to:
            await session.send({"t": "error", "code": "bad_field", "message": "to: a uid"})
            return
        if len(str(body)) > MAX_BODY:
            await session.send({"t": "error", "code": "too_large", "message": "body too long"})
            return
        result = await self.ctx.push([to], {"t": "msg", "from": session.uid, "body": body})
        await session.send({"t": "ack", "id": ref, **result.public()})

    async def on_close(self, session: SessionView, reason: str) -> None:
        return None
