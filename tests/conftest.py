"""Pytest fixtures: thin wrappers over the public test kit (control/testing/), and the
check that no test leaves asyncio tasks behind."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import aiohttp
import pytest

from control.common.config import ConnectionSettings
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.common.kv.etcd import EtcdKV
from control.presence.cluster import PresenceCluster
from control.presence.shards import build_cluster
from control.testing import (
    EtcdServer,
    HaproxyServer,
    PrometheusServer,
    RedisClusterServer,
    RedisServer,
    SentinelGroup,
    describe_task,
    leftover_tasks,
)
from tests.frames import CheckedWebSocket

# How long a test's own tasks get, after its fixtures are torn down, to finish a
# cancellation already under way before they count as left behind.
SETTLE_S = 1.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_leaked_tasks(reason): the test may leave asyncio tasks behind, for the reason"
        " given (a product defect, named with its file); they are cancelled, not reported",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if call.when == "call":
        item.stash[_outcome] = report.passed  # type: ignore[attr-defined]
    return report


_outcome = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def no_leaked_tasks(request: pytest.FixtureRequest) -> None:
    """Fails an async test that leaves tasks pending on its event loop (named in the failure).
    Autouse, so it is set up first and its check runs after every other fixture's teardown."""
    if inspect.iscoroutinefunction(getattr(request.node, "obj", None)):
        request.getfixturevalue("_leak_check")


@pytest.fixture
async def _leak_check(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    loop = asyncio.get_running_loop()
    for _ in range(3):  # let cancellations already requested run
        await asyncio.sleep(0)
    left = leftover_tasks(loop)
    if left:
        await asyncio.wait(left, timeout=SETTLE_S)
        left = [t for t in left if not t.done()]
    if not left:
        return
    for task in left:
        task.cancel()
    await asyncio.wait(left, timeout=SETTLE_S)
    allowed = request.node.get_closest_marker("allow_leaked_tasks")
    if allowed is not None:
        assert allowed.kwargs.get("reason"), "allow_leaked_tasks needs a reason"
    elif request.node.stash.get(_outcome, False):  # a failed test says why already
        names = ", ".join(sorted(describe_task(t) for t in left))
        pytest.fail(f"the test left {len(left)} asyncio task(s) pending: {names}")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd for the session; tests keep apart by key prefix."""
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd of the test's own, for tests that kill, freeze and restart it."""
    with EtcdServer(tmp_path / "etcd-data") as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the test, with no cap on its connections; its WebSockets hold
    every frame to the frame schema (tests/frames.py). An idle pooled connection is let go
    well inside the servers' idle deadline, as our own clients do (a request that picked
    up one the server had just closed failed with ServerDisconnectedError)."""
    keepalive = ConnectionSettings().client_keepalive_s
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive)
    async with aiohttp.ClientSession(
        connector=connector, ws_response_class=CheckedWebSocket
    ) as session:
        yield session


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
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster (3 masters, 3 replicas) for the session; tests keep apart by
    key prefix. A test that kills, fails over or reshards it takes ``own_redis_cluster``."""
    with RedisClusterServer(tmp_path_factory.mktemp("rcluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def own_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A Redis Cluster of the module's own (its tests kill masters and move slots)."""
    with RedisClusterServer(tmp_path_factory.mktemp("own-rcluster")) as cluster:
        yield cluster


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A Sentinel-managed master with one replica and three sentinels, the test's own."""
    with SentinelGroup(tmp_path / "sentinel") as group:
        yield group


@pytest.fixture(params=["embedded", "redis", "redis-cluster"])
async def presence(request: pytest.FixtureRequest) -> AsyncIterator[PresenceCluster]:
    """A two-shard status cluster on each backend, and the Redis Cluster engine; the
    conformance suite runs on all three."""
    if request.param == "redis-cluster":
        from control.presence.cluster_engine import RedisClusterPresence

        rc: RedisClusterServer = request.getfixturevalue("redis_cluster")
        engine = RedisClusterPresence(
            rc.seeds, timeout_s=30, key_prefix=f"t{uuid.uuid4().hex[:8]}:"
        )
        yield engine  # type: ignore[misc]
        await engine.close()
        return
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


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[[Iterable[str]], PrometheusServer]]:
    """Starts a real Prometheus of the test's own scraping the ``host:port`` targets given
    (known before the nodes listen: it scrapes them once they do); stopped at teardown."""
    started: list[PrometheusServer] = []

    def start(targets: Iterable[str]) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus{len(started)}", targets)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def haproxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaproxyServer]:
    """A real HAProxy (master-worker, master CLI socket) for the module; stopped after."""
    with HaproxyServer(tmp_path_factory.mktemp("haproxy")) as server:
        assert isinstance(server, HaproxyServer)
        yield server
