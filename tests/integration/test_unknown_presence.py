"""A presence shard that is down makes its users unknown, never offline: in the admin
API's who and lookup, and in a push's result."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from control.access.internal import Pusher
from control.admin.config import AdminConfig
from control.admin.routes import mount
from control.common.auth import TokenTable
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence
from control.scheduler.state import PRESENCE
from tests.unit.test_ring_cluster import Flaky, spec


def cluster_on(stores: dict[str, Flaky]) -> PresenceCluster:
    return PresenceCluster(spec(1, list(stores)), stores, 30, breaker_failures=1)


async def online(cluster: PresenceCluster, uids: list[str]) -> None:
    for uid in uids:
        await cluster.online(Presence(uid, "d", "n1", "c", 0, "online", "r", "web"))


async def test_lookup_and_who_say_unknown_for_a_down_shard(aiohttp_client: Any) -> None:
    stores = {sid: Flaky(sid, 30) for sid in ("s0", "s1")}
    cluster = cluster_on(stores)
    uids = [f"u{i}" for i in range(12)]
    await online(cluster, uids[:6])  # u6..u11 were never online
    down = {u for u in uids if cluster.ring.owner(u) == "s1"}
    assert down and down != set(uids)
    stores["s1"].down = True
    app = web.Application()
    mount(AdminConfig("t", "/t", frozenset(), 1, TokenTable(())))(app)
    app[PRESENCE] = cluster
    client: TestClient[Any, Any] = await aiohttp_client(app)

    body = await (await client.post("/v1/presence/lookup", json={"uids": uids})).json()
    assert set(body["unknown"]) == down
    assert set(body["offline"]) == {u for u in uids[6:] if u not in down}
    assert set(body["online"]) == {u for u in uids[:6] if u not in down}

    gone = next(iter(down))
    resp = await client.get(f"/v1/presence/{gone}")
    body = await resp.json()
    assert resp.status == 503 and body["presence"] == "unknown", body
    assert "presence shard s1 is unavailable" in body["message"]
    stores["s1"].down = False  # the fake refuses close() too while off
    await cluster.close()


async def test_a_push_reports_unknown_users_apart_from_offline_ones() -> None:
    stores = {sid: Flaky(sid, 30) for sid in ("s0", "s1")}
    cluster = cluster_on(stores)
    uids = [f"u{i}" for i in range(12)]
    down = {u for u in uids if cluster.ring.owner(u) == "s1"}
    stores["s1"].down = True
    result = await Pusher(cluster, lambda node: None, "token").push(uids, {"t": "x"})
    assert set(result.unknown) == down
    assert set(result.offline) == set(uids) - down
    assert result.public()["unknown"] == sorted(down)
    stores["s1"].down = False  # the fake refuses close() too while off
    await cluster.close()
