"""One simulated client, as the reference client (control/cli/client.py) behaves: ask the
scheduler with a token, open the WebSocket with the ticket (then the fallbacks), keep the
heartbeat the answer asks for, send ``msg`` frames to other simulated users and time their
acks, follow ``reconnect`` frames after their delay and back off after a lost link, stop on
``kicked``; and log out and back in on its churn schedule. Everything it sees goes into the
worker's current ``Window``."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from control.cli.client import DEFAULT_BACKOFF, Refused, Unauthorized, _ask, backoff_delay
from load.gen import churn
from load.gen.scenario import Scenario
from load.gen.stats import Window

PING = json.dumps({"t": "ping"})
TokenSource = Callable[[str], "str | None"]  # uid -> Authorization bearer, or None
_NET_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


@dataclass
class Population:
    """What the clients of one worker share: the scenario, the HTTP sessions, where each
    connected uid is, the open sockets (closed together at the end) and the window
    the current second's numbers go to."""

    scenario: Scenario
    asks: aiohttp.ClientSession  # to the scheduler, a small keep-alive pool
    sockets: aiohttp.ClientSession  # WebSockets, one connection each
    token: TokenSource
    start: float  # the run's start on the loop's clock
    window: Window = field(default_factory=Window)
    connected: dict[str, str] = field(default_factory=dict)  # uid -> node
    open: set[aiohttp.ClientWebSocketResponse] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    gave_up: Counter[str] = field(default_factory=Counter)

    def at(self, offset_s: float) -> float:
        """The loop time ``offset_s`` seconds into the run."""
        return self.start + offset_s


def _failure(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return f"ask {str(exc).split(':')[0].removeprefix('HTTP ')}"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"upgrade {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionError):
        return "unreachable"
    return type(exc).__name__


class Client:
    """Client ``index`` of the population: uid, device and platform fixed by the index."""

    def __init__(self, pop: Population, index: int) -> None:
        s = pop.scenario
        self.pop = pop
        self.index = index
        self.uid = s.uid(index)
        self.params = {
            "uid": self.uid,
            "device": f"load-{index}",
            "platform": s.platforms[index % len(s.platforms)],
            "version": s.version,
        }
        if s.region:
            self.params["region"] = s.region
        self.rng = random.Random(f"{s.seed}:{index}:client")
        first = churn.first_login(index, s.clients, s.ramp_s)
        self.first = first
        self.logouts = churn.schedule(
            index, s.clients, s.logouts_per_s, s.off_s, first, s.active_s, s.seed
        )
        self.acks: dict[int, float] = {}  # msg id -> loop time sent
        self.next_id = 0
        self.welcomed = False  # this session got its welcome
        self.leaving = False  # this session is ending in a logout (the timers close it)

    async def run(self) -> None:
        pop = self.pop
        loop = asyncio.get_running_loop()
        await self._sleep_until(pop.at(self.first))
        policy: Mapping[str, float] = DEFAULT_BACKOFF
        failures = 0
        while not pop.stopping.is_set():
            w = pop.window
            t0 = loop.time()
            try:
                answer = await _ask(pop.asks, pop.scenario.server, self.params, pop.token(self.uid))
            except Unauthorized as exc:
                w.counts["ask_failures"] += 1
                w.failures[f"ask {str(exc)[5:8]}"] += 1
                pop.gave_up["unauthorized"] += 1
                return  # asking again with the same credential will not help
            except (*_NET_ERRORS, Refused) as exc:
                w = pop.window
                w.counts["ask_failures"] += 1
                w.failures[_failure(exc)] += 1
                at_least = exc.retry_after if isinstance(exc, Refused) else 0.0
                await self._pause(max(backoff_delay(policy, failures, self.rng.random), at_least))
                failures += 1
                continue
            pop.window.counts["asks"] += 1
            pop.window.latency["endpoint"].add((loop.time() - t0) * 1000)
            policy = answer.get("backoff", policy)
            ending, after = await self._connect(answer)
            if ending == "failed":
                await self._pause(backoff_delay(policy, failures, self.rng.random))
                failures += 1
                continue
            failures = 0
            if ending == "kicked":
                pop.window.counts["kicked"] += 1
                return
            if ending == "logout":
                pop.window.counts["logouts"] += 1
                await self._sleep_until(pop.at(self.logouts.pop(0).back_s))
            elif ending == "reconnect":
                await self._pause(after)
            elif ending == "lost":
                pop.window.reconnects["lost"] += 1
                await self._pause(backoff_delay(policy, 0, self.rng.random))

    async def _sleep_until(self, when: float) -> None:
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less when the run stops."""
        try:
            await asyncio.wait_for(self.pop.stopping.wait(), delay)
        except TimeoutError:
            pass

    async def _connect(self, answer: Mapping[str, Any]) -> tuple[str, float]:
        """Open the answer's node, else each fallback; run the session there. ``failed``
        when none could be opened."""
        pop = self.pop
        loop = asyncio.get_running_loop()
        for c in [answer, *answer.get("fallbacks", [])]:
            url = (
                f"{c['endpoint']}?ticket={c['ticket']}&platform={self.params['platform']}"
                f"&version={self.params['version']}"
            )
            t0 = loop.time()
            try:
                ws = await pop.sockets.ws_connect(url, autoping=True, heartbeat=None)
            except _NET_ERRORS as exc:
                pop.window.counts["handshake_failures"] += 1
                pop.window.failures[_failure(exc)] += 1
                continue
            pop.open.add(ws)
            try:
                return await self._session(ws, c["node"], answer, t0)
            finally:
                pop.open.discard(ws)
                pop.connected.pop(self.uid, None)
                if not ws.closed:
                    await ws.close()
        return "failed", 0.0

    async def _session(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        node: str,
        answer: Mapping[str, Any],
        t0: float,
    ) -> tuple[str, float]:
        """Read frames until the link ends; the timers (heartbeat, messages, the churn's
        logout) run in a task of their own. The reader never times out: a frame that
        arrives in the loop turn a ``receive`` timeout fires in is dropped with it, and
        under load that lost acks and ``reconnect`` frames (the client then stayed, and
        the node closed it as one that would not move)."""
        pop = self.pop
        loop = asyncio.get_running_loop()
        interval = float(answer.get("heartbeat", {}).get("interval_s", 30.0))
        self.welcomed = self.leaving = False
        now = loop.time()
        while self.logouts and pop.at(self.logouts[0].at_s) < now:
            self.logouts.pop(0)  # missed while it was out (a storm): not made up for
        logout_at = pop.at(self.logouts[0].at_s) if self.logouts else math.inf
        timers = asyncio.create_task(self._timers(ws, interval, logout_at), name="timers")
        try:
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(msg.data)
                t = frame.get("t")
                w = pop.window
                if t == "welcome":
                    self.welcomed = True
                    w.counts["handshakes"] += 1
                    w.latency["handshake"].add((loop.time() - t0) * 1000)
                    pop.connected[self.uid] = node
                elif t == "ack":
                    sent = self.acks.pop(frame.get("id", -1), None)
                    if sent is not None:
                        w.counts["acked"] += 1
                        w.latency["message"].add((loop.time() - sent) * 1000)
                elif t == "msg":
                    w.counts["received"] += 1
                elif t == "reconnect":
                    w.reconnects[str(frame.get("reason", "?"))] += 1
                    after = float(frame.get("after_ms", 0)) / 1000
                    return "reconnect", after + self.rng.uniform(0, 0.5)
        except (ConnectionError, aiohttp.ClientError):
            pass  # a link that just broke: lost, as a close is
        finally:
            if self.leaving and not timers.done():
                await timers  # it is closing the socket (a logout): let it finish
            timers.cancel()
        if self.leaving:
            return "logout", 0.0
        if pop.stopping.is_set():
            return "stop", 0.0
        if ws.close_code == 4001:
            return "kicked", 0.0
        if not self.welcomed:
            pop.window.counts["handshake_failures"] += 1
            pop.window.failures[f"closed {ws.close_code} before welcome"] += 1
            return "failed", 0.0
        return "lost", 0.0

    async def _timers(
        self, ws: aiohttp.ClientWebSocketResponse, interval: float, logout_at: float
    ) -> None:
        """The session's heartbeat, messages and logout, each when due; a logout closes
        the socket (the reader then sees it end)."""
        s = self.pop.scenario
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_ping = now + interval
        next_msg = (
            now + self.rng.uniform(0, s.message_interval_s) if s.message_interval_s else math.inf
        )
        try:
            while True:
                await asyncio.sleep(max(min(next_ping, next_msg, logout_at) - loop.time(), 0.0))
                now = loop.time()
                if now >= logout_at:
                    self.leaving = True
                    await ws.close()
                    return
                if now >= next_ping:
                    await ws.send_str(PING)
                    next_ping = now + interval
                if now >= next_msg:
                    if self.welcomed:
                        await self._send_msg(ws, now)
                    next_msg = now + s.message_interval_s * self.rng.uniform(0.5, 1.5)
        except (ConnectionError, aiohttp.ClientError):
            return  # the link broke under a send: the reader sees it end

    async def _send_msg(self, ws: aiohttp.ClientWebSocketResponse, now: float) -> None:
        clients = self.pop.scenario.clients
        if clients < 2:
            return
        peer = (self.index + self.rng.randrange(1, clients)) % clients
        self.next_id += 1
        # Acks that never came (a node killed under it) are forgotten, not held forever.
        if len(self.acks) > 100:
            self.acks.clear()
        self.acks[self.next_id] = now
        body = {"t": "msg", "to": self.pop.scenario.uid(peer), "body": "x", "id": self.next_id}
        await ws.send_str(json.dumps(body))
        self.pop.window.counts["sent"] += 1


def wall_to_loop(wall: float) -> float:
    """A wall-clock moment on this loop's clock (the parent names the start in wall time)."""
    return asyncio.get_running_loop().time() + (wall - time.time())
