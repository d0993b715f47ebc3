from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.kv.etcd import EtcdKV
from tests.servers import EtcdServer


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
