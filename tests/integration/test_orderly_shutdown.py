"""An orderly stop of a process that holds the access nodes with the scheduler and the
controller (``imctl up``) is not a mass loss: nothing in it logs self-preservation."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from tests.cluster import LocalCluster, cluster_settings


@pytest.mark.timeout(60)
async def test_stopping_imctl_up_is_not_a_mass_loss(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = cluster_settings(nodes=3)
    async with (
        LocalCluster(settings, scheduler=True, controller=True),
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{settings.scheduler.port}/v1/nodes"
        deadline = time.monotonic() + 10
        while True:  # the scheduler sees all three nodes (the controller by then too)
            async with http.get(url) as resp:
                seen = len((await resp.json())["nodes"]) if resp.status == 200 else 0
            if seen == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert seen == 3
    vanished = [r.getMessage() for r in caplog.records if "vanished" in r.getMessage()]
    assert not vanished, vanished
