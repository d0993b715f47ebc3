"""Clients of a running imctl: the Pinger, a WebSocket client of an access node."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp


class Pinger:
    """A WebSocket client of an access node that pings every ``every`` seconds, counts the
    pongs and notes anything else it gets (a frame, or the close that ended it). ``strict``:
    anything but a pong means it is no longer ``alive``."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, every: float = 1.0, strict: bool = False
    ) -> None:
        self.ws = ws
        self.every = every
        self.strict = strict
        self.pongs = 0
        self.other: list[Any] = []
        self.task = asyncio.create_task(self._run(), name="pinger")

    async def _run(self) -> None:
        while not self.ws.closed:
            await self.ws.send_json({"t": "ping"})
            msg = await self.ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.other.append((msg.type, self.ws.close_code))
                return
            frame = json.loads(msg.data)
            if frame["t"] == "pong":
                self.pongs += 1
            else:
                self.other.append(frame)
            await asyncio.sleep(self.every)

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.ws.closed and not (self.strict and self.other)

    async def close(self) -> None:
        self.task.cancel()
        # An error it ended with already shows as not alive.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.ws.close()
