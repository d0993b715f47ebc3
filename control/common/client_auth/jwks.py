"""``JwksSource``: a JWK set fetched in the background and handed to the verifier."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from control.common.client_auth.identity import Clock
from control.common.client_auth.keys import VerifyKey, parse_jwks
from control.common.tasks import pause

log = logging.getLogger(__name__)


class JwksSource:
    """A JWK set fetched from ``url`` every ``refresh_s`` (sooner after a failure, or when
    a credential names a key id we do not have), handed to ``on_keys``.

    Timings derive from ``refresh_s``: a failed fetch is retried after a tenth of it, and
    an unknown key id asks for a fetch at most every thirtieth of it (at least 1 s)."""

    def __init__(
        self,
        url: str,
        refresh_s: float,
        on_keys: Callable[[dict[str, VerifyKey]], None],
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self.retry_s = refresh_s / 10
        self.min_gap_s = max(1.0, refresh_s / 30)
        self.timeout_s = min(10.0, self.retry_s)
        self.on_keys = on_keys
        self.clock = clock
        self.wanted = asyncio.Event()
        self.last_fetch = float("-inf")
        self.last_ok = False
        self.kids: tuple[str, ...] = ()

    def want(self) -> None:
        self.wanted.set()

    async def run_once(self, http: aiohttp.ClientSession) -> str:
        """Fetch and apply the set once; a sentence of what happened."""
        self.last_fetch = self.clock()
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with http.get(self.url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                keys = parse_jwks(await resp.json(content_type=None))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RecursionError) as exc:
            self.last_ok = False
            return f"JWKS {self.url}: fetch failed ({exc or type(exc).__name__}); keeping keys"
        self.last_ok = True
        self.kids = tuple(sorted(keys))
        self.on_keys(keys)
        return f"JWKS {self.url}: {len(keys)} key(s): {', '.join(self.kids) or 'none'}"

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                message = await self.run_once(http)
                (log.info if self.last_ok else log.warning)("%s", message)
                self.wanted.clear()
                await self._wait(stop, self.refresh_s if self.last_ok else self.retry_s)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """Until ``seconds`` pass or a fetch is wanted (and the last was min_gap_s ago)."""
        deadline = self.clock() + seconds
        while not stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wanted.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self.wanted.is_set() and not stop.is_set():
                gap = self.last_fetch + self.min_gap_s - self.clock()
                if gap > 0:
                    await pause(stop, min(gap, max(0.0, deadline - self.clock())))
                return
