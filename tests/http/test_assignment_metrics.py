"""imctl_scheduler_assignments_total{release,track} (issue 15 item 8), through the real app."""

from __future__ import annotations

from typing import Any

from control.launch import scheduler_app as create_app
from tests.http.test_endpoint import OK, settings
from tests.tokens import as_user

NODES = [
    {"id": "s1", "endpoint": "ws://127.0.0.1:1/ws", "region": "north", "zone": "a"},
    {"id": "c1", "endpoint": "ws://127.0.0.1:2/ws", "region": "north", "zone": "a",
     "pool": "canary", "capacity": 1},
]  # fmt: skip
RELEASES = [
    {"name": "canary", "target": {"pool": "canary"}, "percent": 100, "exclude": {"uids": ["bob"]}}
]


async def test_assignments_by_release_and_track(aiohttp_client: Any) -> None:
    s = settings(registry={"static_nodes": NODES}, gray={"releases": RELEASES})
    client = await aiohttp_client(create_app(s))
    for uid, node in (("alice", "c1"), ("bob", "s1"), ("carol", "s1")):
        resp = await client.get(
            "/v1/endpoint", params={**OK, "uid": uid, "region": "north"}, headers=as_user(uid)
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["node"] == node, uid
    text = await (await client.get("/metrics")).text()
    # alice took the canary; bob is excluded (no release); carol was taken by the release
    # but the canary's one slot is pending alice's connection: served from stable.
    assert 'imctl_scheduler_assignments_total{release="canary",track="canary"} 1.0' in text
    assert 'imctl_scheduler_assignments_total{release="none",track="stable"} 1.0' in text
    assert 'imctl_scheduler_assignments_total{release="canary",track="stable"} 1.0' in text
