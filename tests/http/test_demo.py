"""The demo web client's files, served by the scheduler at /demo/ (imctl up, or
scheduler.demo) from the installed package, and by no other scheduler."""

from __future__ import annotations

from typing import Any

from control.launch import scheduler_app
from tests.http.test_endpoint import settings


async def test_the_scheduler_serves_the_demo_page(aiohttp_client: Any) -> None:
    client = await aiohttp_client(scheduler_app(settings(), demo=True))
    resp = await client.get("/demo", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/demo/"
    resp = await client.get("/demo/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert '<script src="app.js"></script>' in await resp.text()
    resp = await client.get("/demo/app.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    assert "/v1/endpoint" in await resp.text()
    resp = await client.get("/demo/../service.py")
    assert resp.status == 404


async def test_no_demo_page_unless_asked(aiohttp_client: Any) -> None:
    client = await aiohttp_client(scheduler_app(settings()))
    assert (await client.get("/demo/")).status == 404
    on = await aiohttp_client(scheduler_app(settings(scheduler={"demo": True})))
    assert (await on.get("/demo/")).status == 200
