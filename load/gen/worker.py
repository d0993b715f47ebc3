"""A worker process: its share of the clients on one event loop, reporting a ``Window``
to the parent once a second over a queue, until the parent says stop."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from typing import Any

import aiohttp

from load.gen.client import Client, Population, TokenSource, wall_to_loop
from load.gen.scenario import Scenario
from load.gen.stats import Window

ASK_POOL = 64  # keep-alive connections to the scheduler per worker
CLOSE_WITHIN_S = 10.0  # the sockets' closing handshakes at the end, all together
TOKEN_TTL_S = 3600.0


def raise_descriptor_limit() -> int:
    """The soft limit raised to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def token_source(scenario: Scenario) -> TokenSource:
    """A JWT per uid from the config's development key (as ``imctl token``), re-minted
    before it expires; none when the scenario or the cluster's trust mode wants none."""
    if scenario.tokens == "none":
        return lambda uid: None
    from control.cli.tokens import token_minter

    minter, settings, _ = token_minter(scenario.config)
    if settings.client_auth.mode == "trust":
        return lambda uid: None
    cache: dict[str, tuple[str, float]] = {}

    def token(uid: str) -> str:
        now = time.monotonic()
        held = cache.get(uid)
        if held is None or held[1] < now:
            held = (minter(uid, TOKEN_TTL_S), now + TOKEN_TTL_S / 2)
            cache[uid] = held
        return held[0]

    return token


READY_WITHIN_S = 120.0  # the parent names the start once every worker is ready


def main(
    worker: int, scenario: Scenario, indices: range, start: Any, queue: Any, stop: Any
) -> None:
    """The process's entry (spawned by the parent): puts ("ready", worker) once set up,
    starts at the wall-clock moment the parent then writes into ``start`` (a shared
    double), runs until ``stop`` (an Event) is set, and puts ("done", worker, gave_up)
    after its last window."""
    raise_descriptor_limit()
    asyncio.run(_run(worker, scenario, indices, start, queue, stop))


async def _started(start: Any, stop: Any) -> float | None:
    deadline = time.monotonic() + READY_WITHIN_S
    # A value shared across processes cannot be awaited: poll it, bounded.
    while start.value == 0 and not stop.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return float(start.value) or None


async def _run(
    worker: int, scenario: Scenario, indices: range, start: Any, queue: Any, stop: Any
) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    ws_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=ASK_POOL)
        ) as asks,
        aiohttp.ClientSession(
            timeout=ws_timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as sockets,
    ):
        pop = Population(scenario, asks, sockets, token_source(scenario), 0.0)
        clients = [Client(pop, i) for i in indices]
        queue.put(("ready", worker, None))
        start_wall = await _started(start, stop)
        if start_wall is None:
            queue.put(("done", worker, {}))
            return
        pop.start = wall_to_loop(start_wall)
        tasks = [asyncio.create_task(c.run(), name=f"client-{c.uid}") for c in clients]
        second = 0
        while not stop.is_set():
            # Tick on the run's second boundaries, so every worker's second N is the same.
            second += 1
            await asyncio.sleep(max(0.0, pop.at(second) - asyncio.get_running_loop().time()))
            _report(pop, worker, second - 1, queue)
        pop.stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(ws.close() for ws in list(pop.open)), return_exceptions=True),
                CLOSE_WITHIN_S,
            )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _report(pop, worker, second, queue)
        queue.put(("done", worker, dict(pop.gave_up)))


def _report(pop: Population, worker: int, second: int, queue: Any) -> None:
    window, pop.window = pop.window, Window()
    window.online = len(pop.connected)
    window.by_node = Counter(pop.connected.values())
    queue.put(("window", worker, (second, window.to_data())))
