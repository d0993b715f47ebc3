"""Propagation (issue 15 item 7): two schedulers on one key-value store publish the release
revisions they serve; ``GET /v1/gray/propagation`` says who serves the current revision
and who lags; a scheduler that stops takes its record with it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient

from control.common.kv.embedded import EmbeddedKV
from control.common.schema import build
from control.gray.model import Release
from control.gray.store import ReleaseStore
from control.launch import scheduler_app
from control.scheduler.served import ServedReleases, served_records
from control.scheduler.service import PUBLISHER
from tests.cluster import cluster_settings

VIEWER = "viewer-token-for-the-propagation-test-0123"
OPERATOR = "operator-token-for-the-propagation-test-01"
TOKENS = [
    {"name": "ops", "token": VIEWER, "role": "viewer"},
    {"name": "sre", "token": OPERATOR, "role": "operator"},
]
AS_VIEWER = {"Authorization": f"Bearer {VIEWER}"}
PREFIX = "/imctl"


def canary(percent: float) -> Release:
    problems: list[str] = []
    data = {"name": "canary", "target": {"pool": "canary"}, "percent": percent}
    release = build(Release, data, "release", problems)
    assert not problems
    return release


async def until(client: TestClient[Any, Any], want: Any, deadline_s: float = 5.0) -> Any:
    """Poll the route until ``want(answer)``; the last answer either way."""
    end = time.monotonic() + deadline_s
    while True:
        resp = await client.get("/v1/gray/propagation", headers=AS_VIEWER)
        assert resp.status == 200
        answer = await resp.json()
        if want(answer) or time.monotonic() > end:
            return answer
        await asyncio.sleep(0.05)


async def test_each_scheduler_reports_the_revision_it_serves(aiohttp_client: Any) -> None:
    kv = EmbeddedKV()
    await kv.connect()
    try:
        settings = cluster_settings(1, admin={"tokens": TOKENS})
        store = ReleaseStore(kv, PREFIX)
        first = await store.create(canary(10), by="sre")
        one = await aiohttp_client(scheduler_app(settings, kv=kv))
        two = await aiohttp_client(scheduler_app(settings, kv=kv))
        ids = sorted(c.app[PUBLISHER].id for c in (one, two))

        def all_on(revision: int) -> Any:
            return lambda a: (
                a["releases"]["canary"]["serving"] == ids
                and (a["releases"]["canary"]["revision"] == revision)
            )

        answer = await until(one, all_on(first.revision))
        assert answer["releases"]["canary"] == {
            "revision": first.revision,
            "serving": ids,
            "lagging": [],
        }
        assert [s["id"] for s in answer["schedulers"]] == ids
        assert all(s["releases"] == {"canary": first.revision} for s in answer["schedulers"])

        # A change reaches both (each writes at most once a second: within ~1 s).
        second = await store.change("canary", first.revision, canary(25), action="set", by="sre")
        answer = await until(two, all_on(second.revision))
        assert answer["releases"]["canary"]["serving"] == ids, answer

        # A scheduler stuck on an old revision is named as lagging, with what it serves.
        await served_records(kv, PREFIX).put(
            ServedReleases("stuck", {"canary": first.revision}, time.time())
        )
        answer = await until(one, lambda a: "stuck" in [s["id"] for s in a["schedulers"]])
        assert answer["releases"]["canary"]["lagging"] == [
            {"id": "stuck", "revision": first.revision}
        ]
        assert answer["releases"]["canary"]["serving"] == ids

        # A scheduler that stops revokes its lease: its record goes with it.
        gone = two.app[PUBLISHER].id
        await two.close()
        answer = await until(one, lambda a: gone not in [s["id"] for s in a["schedulers"]])
        assert gone not in [s["id"] for s in answer["schedulers"]]
        # Unauthenticated: 401.
        assert (await one.get("/v1/gray/propagation")).status == 401
    finally:
        await kv.close()
