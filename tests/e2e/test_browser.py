"""The demo page in a real browser (headless Chromium from Debian): loaded from another
origin, it gets an endpoint through CORS, connects, heartbeats, receives a direct message
from a second client, and follows a drain to another node; a page on an origin not in
cors.origins is refused by the scheduler and by the nodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from control.scheduler.demo import demo_dir
from control.testing import free_port, until
from tests.browser import CHROMIUM, Browser, Page, static_site
from tests.cluster import LocalCluster, cluster_settings
from tests.tokens import token

pytestmark = pytest.mark.e2e


async def state(page: Page, field: str) -> object:
    return await page.evaluate(f"window.imctl ? window.imctl.{field} : null")


@pytest.mark.timeout(90)
async def test_the_demo_page_in_a_real_browser(tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM) or shutil.which("chromium"), "Debian's chromium is needed"
    allowed_port, other_port = free_port(), free_port()
    allowed = f"http://127.0.0.1:{allowed_port}"
    settings = cluster_settings(nodes=2, cors={"origins": [allowed]})
    scheduler = f"http://127.0.0.1:{settings.scheduler.port}"
    sites = [await static_site(demo_dir(), p) for p in (allowed_port, other_port)]
    try:
        async with (
            LocalCluster(settings, scheduler=True) as c,
            Browser(tmp_path) as browser,
            aiohttp.ClientSession() as http,
        ):
            page = await browser.page()
            query = f"server={scheduler}&token={token('alice')}&device=web-1&connect=1"
            await page.goto(f"{allowed}/index.html?{query}")

            async def connected() -> bool:
                return await state(page, "status") == "connected"

            await until(connected, 20, "the page connected")
            first = str(await state(page, "node"))
            assert [e.node for e in await c.presence.who("alice")] == [first]

            # Heartbeats at the answer's interval (1 s here) reach the node.
            node = c.node(first)
            await until(lambda: node.metrics.frames.value(first, "ping") >= 1, 5, "a ping")

            # A direct message from a second client, and one back from the page.
            bob, _ = await c.connect(http, "bob", "n0")
            await bob.send_json({"t": "msg", "to": "alice", "body": "hi page", "id": 1})

            async def got_message() -> bool:
                frames = await state(page, "frames")
                assert isinstance(frames, list)
                return {"t": "msg", "from": "bob", "body": "hi page"} in frames

            await until(got_message, 10, "the page shows bob's message")
            await page.evaluate("window.imctl.send('bob', 'hi bob')")
            for _ in range(5):
                frame = await bob.receive_json(timeout=5)
                if frame.get("t") == "msg":
                    break
            assert frame == {"t": "msg", "from": "alice", "body": "hi bob"}, frame

            # A drain sends a reconnect frame: the page asks again and lands elsewhere.
            node.start_drain(0.2, "test drain")

            async def moved() -> bool:
                where = await state(page, "node")
                return where not in (None, first) and await connected()

            await until(moved, 15, "the page followed the drain")
            second = str(await state(page, "node"))
            frames = await state(page, "frames")
            assert isinstance(frames, list)
            assert any(f.get("t") == "reconnect" for f in frames), frames
            await until(lambda: c.presence.who("alice"), 5, "alice is online")
            assert [e.node for e in await c.presence.who("alice")] == [second]
            await bob.close()

            # A page of another origin: the browser refuses the scheduler's answer
            # (no CORS headers), and the node refuses its WebSocket (Origin check).
            stranger = await browser.page()
            origin = f"http://127.0.0.1:{other_port}"
            await stranger.goto(f"{origin}/index.html?{query.replace('web-1', 'web-2')}")

            async def refused() -> bool:
                notes = await state(stranger, "notes")
                return isinstance(notes, list) and any(n.startswith("scheduler:") for n in notes)

            await until(refused, 15, "the stranger page's ask refused")
            assert await state(stranger, "node") is None
            ticket = c.ticket("mallory", "web-3", second)
            url = json.dumps(c.ws_url(second, ticket))
            opened = await stranger.evaluate(
                f"new Promise((ok) => {{ const ws = new WebSocket({url});"
                " ws.onopen = () => ok('open'); ws.onclose = () => ok('refused'); })"
            )
            assert opened == "refused"
            assert c.node(second).metrics.handshakes.value(second, "bad_origin") == 1
            await stranger.evaluate("window.imctl.stopped = true")
    finally:
        for site in sites:
            await site.cleanup()
