"""The scheduler on a real etcd: lease expiry, watch resume across a restart,
self-preservation, releases read from the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.common.kv.etcd import EtcdKV
from control.common.registry import NodeRecord, Registry
from control.gray.model import Release, Target
from control.gray.store import GrayStore
from control.launch import scheduler_app as create_app
from control.scheduler.feed import FEED
from control.scheduler.state import ENGINE
from control.settings import Settings, parse_settings
from control.testing import EtcdServer, until
from tests.tokens import CLIENT_AUTH, as_user

pytestmark = pytest.mark.etcd
OK = {"uid": "alice", "device": "d1", "platform": "ios", "version": "1.0"}


def config(endpoint: str, prefix: str, **registry: Any) -> Settings:
    return parse_settings(
        {
            "cluster": {"backend": "etcd", "prefix": prefix, "etcd": {"endpoints": [endpoint]}},
            "regions": {"known": ["r1"]},
            "registry": {"lease_ttl_s": 2, "verify_s": 60, **registry},
            "scheduler": {"rebuild_s": 0},
            "client_auth": CLIENT_AUTH,
        }
    )


def node(nid: str, **kw: Any) -> NodeRecord:
    return NodeRecord(id=nid, endpoint=f"ws://127.0.0.1/{nid}", region="r1", **kw)


@pytest.fixture
async def etcd_kv(etcd_server: EtcdServer) -> AsyncIterator[EtcdKV]:
    kv = EtcdKV(etcd_server.endpoint)
    await kv.connect()
    yield kv
    await kv.close()


async def keep_alive(reg: Any, stop: asyncio.Event) -> None:
    await reg.run(stop)


async def synced_scheduler(
    aiohttp_client: Any, settings: Settings
) -> tuple[web.Application, TestClient]:
    """The scheduler app behind a test client, once its first registry view is in."""
    app = create_app(settings)
    client: TestClient = await aiohttp_client(app, headers=as_user(OK["uid"]))
    await asyncio.wait_for(app[FEED].synced.wait(), 10)
    return app, client


async def test_lease_expiry_leaves_snapshot_within_ttl_plus_1s(
    aiohttp_client: Any, etcd_server: EtcdServer, etcd_kv: EtcdKV, prefix: str
) -> None:
    app, client = await synced_scheduler(aiohttp_client, config(etcd_server.endpoint, prefix))
    registry = Registry(etcd_kv, prefix)
    stop = asyncio.Event()
    regs = [await registry.register(node(f"keep-{i}"), ttl=2) for i in range(3)]
    keepers = [asyncio.create_task(r.run(stop)) for r in regs]
    try:
        await registry.register(node("dies"), ttl=2)
        granted = time.monotonic()
        engine = app[ENGINE]
        await until(lambda: "dies" in engine.snapshot.nodes, 3, "registered node seen")
        await until(lambda: "dies" not in engine.snapshot.nodes, 6, "expired node dropped")
        elapsed = time.monotonic() - granted
        assert elapsed <= 2 + 1, f"node left the snapshot {elapsed:.2f}s after its last refresh"
        assert {f"keep-{i}" for i in range(3)} <= set(engine.snapshot.nodes)
        for _ in range(20):
            body = await (await client.get("/v1/endpoint", params=OK)).json()
            assert body["node"] != "dies"
    finally:
        stop.set()
        await asyncio.gather(*keepers)


async def test_watch_survives_etcd_restart(aiohttp_client: Any, own_etcd: EtcdServer) -> None:
    app, _ = await synced_scheduler(aiohttp_client, config(own_etcd.endpoint, "/imctl"))
    engine = app[ENGINE]
    mirror = app[FEED].mirrors["nodes"]
    writer = EtcdKV(own_etcd.endpoint)
    await writer.connect()
    try:
        registry = Registry(writer, "/imctl")
        await registry.register(node("before"), ttl=30)
        await until(lambda: "before" in engine.snapshot.nodes, 5, "node before restart")
        relists = mirror.relists
        own_etcd.restart()
        await registry.register(node("after"), ttl=30)
        await until(lambda: "after" in engine.snapshot.nodes, 15, "node after restart")
        assert mirror.resumes >= 1, "the watch never noticed the restart"
        assert mirror.relists == relists, "resumed by re-listing instead of from its revision"
        assert "before" in engine.snapshot.nodes
    finally:
        await writer.close()


async def test_self_preservation_holds_then_accepts(
    aiohttp_client: Any, etcd_server: EtcdServer, etcd_kv: EtcdKV, prefix: str
) -> None:
    cfg = config(
        etcd_server.endpoint,
        prefix,
        self_preservation={"threshold": 0.5, "window_s": 10, "grace_s": 4},
    )
    app, _ = await synced_scheduler(aiohttp_client, cfg)
    engine = app[ENGINE]
    registry = Registry(etcd_kv, prefix)
    stop = asyncio.Event()
    survivor = await registry.register(node("survivor"), ttl=2)
    keeper = asyncio.create_task(survivor.run(stop))
    try:
        for i in range(3):
            await registry.register(node(f"doomed-{i}"), ttl=2)  # never refreshed
        await until(lambda: len(engine.snapshot.nodes) == 4, 3, "all four seen")
        await until(lambda: len(app[FEED].mirrors["nodes"].items) == 1, 6, "leases expired")
        assert len(engine.snapshot.nodes) == 4 and engine.snapshot.held
        assert "self-preservation" in engine.message
        await until(lambda: len(engine.snapshot.nodes) == 1, 8, "loss accepted after grace")
        assert not engine.snapshot.held
    finally:
        stop.set()
        await keeper


async def test_releases_from_store_and_cas(
    aiohttp_client: Any, etcd_server: EtcdServer, etcd_kv: EtcdKV, prefix: str
) -> None:
    app, client = await synced_scheduler(aiohttp_client, config(etcd_server.endpoint, prefix))
    registry = Registry(etcd_kv, prefix)
    await registry.register(node("stable-1"), ttl=10)
    await registry.register(node("canary-1", pool="canary"), ttl=10)
    store = GrayStore(etcd_kv, prefix)
    release = Release(name="canary", target=Target(pool="canary"), percent=100)
    ok, rev = await store.save(release, 0)
    assert ok
    conflict, current = await store.save(release, 0)
    assert not conflict and current == rev
    engine = app[ENGINE]
    await until(lambda: [r.name for r in engine.snapshot.releases] == ["canary"], 5, "release")
    body = await (await client.get("/v1/endpoint", params=OK)).json()
    assert (body["node"], body["track"]) == ("canary-1", "canary")
    paused_out = Release(name="canary", target=Target(pool="canary"), percent=0)
    ok, _ = await store.save(paused_out, rev)
    assert ok
    await until(lambda: engine.snapshot.releases[0].percent == 0, 5, "percent change")
    body = await (await client.get("/v1/endpoint", params=OK)).json()
    assert (body["node"], body["track"]) == ("stable-1", "stable")


async def test_admin_writes_while_etcd_is_down_are_503(
    aiohttp_client: Any, own_etcd: EtcdServer
) -> None:
    settings = parse_settings(
        {
            "cluster": {
                "backend": "etcd",
                "prefix": "/imctl",
                "etcd": {"endpoints": [own_etcd.endpoint], "timeout_s": 1},
            },
            "regions": {"known": ["r1"]},
            "registry": {
                "lease_ttl_s": 2,
                "static_nodes": [{"id": "s1", "endpoint": "ws://127.0.0.1/s1", "region": "r1"}],
            },
            "scheduler": {"rebuild_s": 0},
            "client_auth": CLIENT_AUTH,
        }
    )
    _, client = await synced_scheduler(aiohttp_client, settings)
    own_etcd.stop()
    resp = await client.post("/v1/nodes/s1/drain", json={"over_s": 10})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"] == "unavailable"
    resp = await client.delete("/v1/nodes/s1/drain")
    assert resp.status == 503
    # Clients are still answered from the snapshot.
    assert (await client.get("/v1/endpoint", params=OK)).status == 200
    own_etcd.start()
