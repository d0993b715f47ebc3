from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.kv.etcd import EtcdKV
from control.presence.cluster import PresenceCluster, build_cluster
from tests.servers import EtcdServer, RedisServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the session; tests keep apart by key prefix."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd of the test's own, for tests that kill and restart it."""
    server = EtcdServer(tmp_path / "etcd-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["embedded", "etcd"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KeyValueStore]:
    """Each conformance test runs against both backends."""
    store: KeyValueStore
    if request.param == "embedded":
        store = EmbeddedKV()
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        store = EtcdKV(server.endpoint, timeout_s=5)
    await store.connect()
    yield store
    await store.close()


@pytest.fixture(scope="session")
def redis_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Two real Redis shards for the session; tests keep apart by key prefix."""
    servers = [RedisServer(tmp_path_factory.mktemp(f"redis{i}")) for i in range(2)]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(params=["embedded", "redis"])
async def presence(request: pytest.FixtureRequest) -> AsyncIterator[PresenceCluster]:
    """A two-shard status cluster on each backend; the conformance suite runs on both."""
    if request.param == "redis":
        servers: list[RedisServer] = request.getfixturevalue("redis_servers")
        shards = [(f"s{i}", s.url, 1) for i, s in enumerate(servers)]
    else:
        shards = [("s0", "", 1), ("s1", "", 1)]
    cluster = build_cluster(
        shards, request.param, timeout_s=30, key_prefix=f"t{uuid.uuid4().hex[:8]}:"
    )
    yield cluster
    await cluster.close()
