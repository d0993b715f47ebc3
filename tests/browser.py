"""A real browser for the tests: headless Chromium from Debian's ``chromium`` package
(never a download), driven over the Chrome DevTools Protocol with aiohttp's WebSocket
client, and tiny static servers to load pages from other origins."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from control.testing import stop_process, until

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--remote-debugging-port=0",
)  # fmt: skip


class PageError(Exception):
    """A script the page ran threw."""


class Page:
    """One tab: ``goto`` a URL, ``evaluate`` an expression (promises awaited)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        for _ in range(10_000):  # events come in between; bounded all the same
            reply = await self.ws.receive_json(timeout=10)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise PageError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
        raise PageError(f"{method}: no answer among 10,000 messages")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise PageError(json.dumps(result["exceptionDetails"])[:500])
        return result["result"].get("value")


class Browser:
    """``async with Browser(tmp) as b: page = await b.page()``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.profile = directory / "profile"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.base = ""

    async def __aenter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "chromium.log").open("wb")
        # Popen returns at once (the browser runs on its own): nothing here blocks the loop.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        active = self.profile / "DevToolsActivePort"
        await until(lambda: active.exists() and active.read_text().count("\n") >= 1, 20, "chromium")
        port = int(active.read_text().split()[0])
        self.base = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession()
        return self

    async def page(self) -> Page:
        assert self.http is not None
        async with self.http.put(f"{self.base}/json/new?about:blank") as resp:
            target = await resp.json()
        ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        await page.call("Page.enable")
        return page

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            await asyncio.to_thread(stop_process, self.proc, 10.0)
        shutil.rmtree(self.profile, ignore_errors=True)


async def static_site(directory: Path, port: int) -> web.AppRunner:
    """Serve ``directory``'s files on 127.0.0.1:``port`` (another origin than the
    scheduler's); the caller cleans the runner up."""
    app = web.Application()
    app.router.add_static("/", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
