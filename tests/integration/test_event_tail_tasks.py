"""Event tails (``GET /v1/presence/events``) leave no task behind: every way a tail ends
(the reader leaves, ``count`` is reached) cancels and awaits what it started, so asyncio
never reports "Task was destroyed but it is pending!" for one."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import aiohttp
import pytest

from tests.cluster import LocalCluster, cluster_settings

TAILS = 40  # each of the ways a tail ends, this many times


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_ended_tails_leave_no_pending_task(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    presence: dict[str, Any] = {"flush_s": 0.1}
    if backend == "redis":
        servers = request.getfixturevalue("redis_servers")
        presence |= {
            "backend": "redis",
            "shards": [{"id": f"s{i}", "url": s.url} for i, s in enumerate(servers)],
            "key_prefix": f"tt{time.monotonic_ns()}:",
        }
    settings = cluster_settings(
        nodes=1, presence=presence, scheduler={"max_event_tails": TAILS * 2}
    )
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with (
            LocalCluster(settings, scheduler=True) as c,
            aiohttp.ClientSession() as http,
        ):
            url = f"http://127.0.0.1:{settings.scheduler.port}/v1/presence/events"
            # 1. readers that leave while the tail waits for events
            tails = [await http.get(url) for _ in range(TAILS)]
            assert {t.status for t in tails} == {200}
            for t in tails:
                t.close()
            # 2. tails that end by count: one login and logout is two events for each
            counted = [await http.get(url, params={"count": "2"}) for _ in range(TAILS)]
            assert {t.status for t in counted} == {200}
            ws, _ = await c.connect(http, "alice", "n0")
            await ws.close()
            for t in counted:
                body = await asyncio.wait_for(t.read(), 10)
                assert body.count(b'"uid": "alice"') == 2, body
            # Every tail has given its place back (the readers that left within about a
            # second: EVENTS_CHECK_S).
            metrics_url = url.replace("/v1/presence/events", "/metrics")
            deadline = time.monotonic() + 10
            while True:
                async with http.get(metrics_url) as m:
                    text = await m.text()
                if "imctl_scheduler_event_tails 0.0" in text or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert "imctl_scheduler_event_tails 0.0" in text
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
    destroyed = [r for r in reported if "destroyed" in str(r.get("message"))]
    assert not destroyed, f"{len(destroyed)} tasks destroyed while pending: {destroyed[:2]}"
    assert not [r for r in caplog.records if "Task was destroyed" in r.getMessage()]
    assert not reported, reported[:3]
