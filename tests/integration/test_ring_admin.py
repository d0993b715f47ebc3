"""The ring's admin routes (``/v1/ring...``) on an embedded key-value store: roles,
every refusal a clear JSON error with nothing written, a lost race a 409; and the probe of
a new shard's URL against a real Redis, a closed port and a socket that never answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.admin.config import AdminConfig
from control.admin.routes import mount
from control.common.auth import Grant, TokenTable
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.presence.probe import unreachable
from control.presence.ring import RingSpec, ShardSpec
from control.presence.ringstore import MoverControl, MoverProgress, RingStore
from control.scheduler.state import KV
from control.testing import RedisServer

PREFIX = "/t-ring"
VIEWER, OPERATOR = "v" * 24, "o" * 24
SPEC = RingSpec(1, (ShardSpec("s0", "embedded:s0"), ShardSpec("s1", "embedded:s1")))
ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def as_viewer() -> dict[str, str]:
    return {"Authorization": f"Bearer {VIEWER}"}


def as_operator() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR}"}


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


def _app(kv: KeyValueStore) -> web.Application:
    grants = TokenTable((Grant("ops", VIEWER, "viewer"), Grant("sre", OPERATOR, "operator")))
    app = web.Application()
    mount(AdminConfig("test", PREFIX, frozenset(), 1, grants))(app)
    app[KV] = kv
    return app


@pytest.fixture
async def client(kv: EmbeddedKV, aiohttp_client: ClientMaker) -> TestClient[Any, Any]:
    await RingStore(kv, PREFIX).seed(SPEC)
    return await aiohttp_client(_app(kv))


async def _ring(kv: KeyValueStore) -> tuple[RingSpec | None, int]:
    stored = await RingStore(kv, PREFIX).ring()
    assert stored is not None
    return stored.record, stored.revision


async def test_status_reads_ring_control_and_progress(
    client: TestClient[Any, Any], kv: EmbeddedKV
) -> None:
    resp = await client.get("/v1/ring", headers=as_viewer())
    body = await resp.json()
    assert resp.status == 200, body
    assert body["ring"]["version"] == 1 and body["ring"]["state"] == "stable"
    assert [s["id"] for s in body["ring"]["shards"]] == ["s0", "s1"]
    assert body["control"] == {"paused": False, "throttle_per_s": 50_000.0}
    assert body["progress"] is None and body["moved_fraction"] == 0.0
    assert body["revision"] == (await _ring(kv))[1]

    resp = await client.post("/v1/ring/shards", json={"url": "embedded:s2"}, headers=as_operator())
    assert resp.status == 202, await resp.json()
    await RingStore(kv, PREFIX).write_progress(MoverProgress(2, 10, 40, 5.0))
    body = await (await client.get("/v1/ring", headers=as_viewer())).json()
    assert body["ring"]["state"] == "migrating" and body["ring"]["version"] == 2
    assert [s["id"] for s in body["ring"]["previous"]] == ["s0", "s1"]
    assert 0.2 < body["moved_fraction"] < 0.5  # ideal 1/3
    assert body["progress"]["moved"] == 10 and body["progress"]["expected"] == 40


async def test_roles(client: TestClient[Any, Any], kv: EmbeddedKV) -> None:
    assert (await client.get("/v1/ring")).status == 401
    assert (await client.get("/v1/ring", headers=as_operator())).status == 200
    changes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/ring/shards", {"url": "embedded:s2"}),
        ("DELETE", "/v1/ring/shards/s1", None),
        ("PUT", "/v1/ring/shards/s1", {"weight": 2}),
        ("POST", "/v1/ring/pause", None),
        ("POST", "/v1/ring/resume", None),
        ("PUT", "/v1/ring/throttle", {"users_per_s": 10}),
    ]
    before = await _ring(kv)
    for method, path, body in changes:
        resp = await client.request(method, path, json=body, headers=as_viewer())
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (403, "forbidden"), (path, answer)
        assert (await client.request(method, path, json=body)).status == 401
    assert await _ring(kv) == before
    assert await RingStore(kv, PREFIX).control() == MoverControl()


async def test_add_remove_reweight_write_the_next_ring(
    client: TestClient[Any, Any], kv: EmbeddedKV
) -> None:
    store = RingStore(kv, PREFIX)
    resp = await client.post(
        "/v1/ring/shards",
        json={"url": "embedded:s7", "weight": 3, "id": "big"},
        headers=as_operator(),
    )
    body = await resp.json()
    assert resp.status == 202, body
    spec, _ = await _ring(kv)
    assert spec is not None and body["ring"]["version"] == spec.version == 2
    assert spec.shards[-1] == ShardSpec("big", "embedded:s7", 3) and spec.previous == SPEC.shards

    # Marked stable (the mover's job), then the next changes go through.
    stored = await store.ring()
    assert stored is not None and spec is not None
    stable = RingSpec(spec.version, spec.shards, (), "stable", spec.vnodes)
    assert (await store.change(stable, stored.revision))[0]
    resp = await client.put("/v1/ring/shards/big", json={"weight": 1}, headers=as_operator())
    assert resp.status == 202, await resp.json()
    spec, _ = await _ring(kv)
    assert spec is not None and (spec.version, spec.shards[-1].weight) == (3, 1)

    stored = await store.ring()
    assert stored is not None
    stable = RingSpec(spec.version, spec.shards, (), "stable", spec.vnodes)
    assert (await store.change(stable, stored.revision))[0]
    resp = await client.delete("/v1/ring/shards/s0", headers=as_operator())
    assert resp.status == 202, await resp.json()
    spec, _ = await _ring(kv)
    assert spec is not None and [s.id for s in spec.shards] == ["s1", "big"]
    assert [s.id for s in spec.previous] == ["s0", "s1", "big"] and spec.version == 4


REFUSALS: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/v1/ring/shards", {"url": "embedded:s1"}, 400,
     "url: embedded:s1 is shard 's1' already"),
    ("POST", "/v1/ring/shards", {"url": "embedded:x", "id": "s0"}, 400,
     "id: shard 's0' exists already"),
    ("POST", "/v1/ring/shards", {"url": "embedded:x", "weight": 0}, 400,
     "weight: a whole number from 1 to 100, not 0"),
    ("POST", "/v1/ring/shards", {"url": "embedded:x", "weight": -2}, 400,
     "weight: a whole number from 1 to 100, not -2"),
    ("POST", "/v1/ring/shards", {"url": "embedded:x", "weight": "2"}, 400,
     "weight: a whole number from 1 to 100, not '2'"),
    ("POST", "/v1/ring/shards", {"url": "redis://127.0.0.1:6379/0"}, 400,
     "url: a redis shard on a ring of the other kind"),
    ("POST", "/v1/ring/shards", {"url": 5}, 400, "url: a string"),
    ("POST", "/v1/ring/shards", {"weight": 2, "size": 1}, 400,
     "size: unknown field; url: required"),
    ("POST", "/v1/ring/shards", "[1]", 400, "body: a JSON object"),
    ("POST", "/v1/ring/shards", b"{nope", 400, "body is not JSON"),
    ("DELETE", "/v1/ring/shards/s9", None, 404, "no shard 's9' on the ring"),
    ("PUT", "/v1/ring/shards/s9", {"weight": 2}, 404, "no shard 's9' on the ring"),
    ("PUT", "/v1/ring/shards/s1", {"weight": 1}, 400, "has weight 1 already"),
    ("PUT", "/v1/ring/shards/s1", {}, 400, "weight: required"),
    ("PUT", "/v1/ring/throttle", {"users_per_s": 0}, 400, "users_per_s: a number"),
    ("PUT", "/v1/ring/throttle", {"users_per_s": True}, 400, "users_per_s: a number"),
    ("PUT", "/v1/ring/throttle", {}, 400, "users_per_s: required"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"), REFUSALS, ids=[r[4][:30] for r in REFUSALS]
)
async def test_refusals_are_clear_and_write_nothing(
    client: TestClient[Any, Any],
    kv: EmbeddedKV,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    before = await _ring(kv), await kv.get(f"{PREFIX}/presence/mover")
    kw: dict[str, Any] = {"data": body} if isinstance(body, bytes | str) else {"json": body}
    resp = await client.request(method, path, headers=as_operator(), **kw)
    answer = await resp.json()
    assert resp.status == status, answer
    assert message in answer["message"], answer
    assert answer["error"] in ("bad_request", "not_found")
    assert (await _ring(kv), await kv.get(f"{PREFIX}/presence/mover")) == before


async def test_removing_the_last_shard_is_refused(
    kv: EmbeddedKV, aiohttp_client: ClientMaker
) -> None:
    await RingStore(kv, PREFIX).seed(RingSpec(4, (ShardSpec("only", "embedded:only"),)))
    client = await aiohttp_client(_app(kv))
    before = await _ring(kv)
    resp = await client.delete("/v1/ring/shards/only", headers=as_operator())
    answer = await resp.json()
    assert resp.status == 400 and "'only' is the last one" in answer["message"], answer
    assert await _ring(kv) == before


async def test_a_second_resize_while_one_runs_is_409_naming_the_version(
    client: TestClient[Any, Any], kv: EmbeddedKV
) -> None:
    first = await client.post("/v1/ring/shards", json={"url": "embedded:s2"}, headers=as_operator())
    assert first.status == 202
    before = await _ring(kv)
    for method, path, body in (
        ("POST", "/v1/ring/shards", {"url": "embedded:s3"}),
        ("DELETE", "/v1/ring/shards/s0", None),
        ("PUT", "/v1/ring/shards/s0", {"weight": 4}),
    ):
        resp = await client.request(method, path, json=body, headers=as_operator())
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (409, "conflict"), answer
        assert answer["message"].startswith("ring version 2 is still migrating"), answer
        assert answer["problems"] == [answer["message"]]
    assert await _ring(kv) == before


async def test_a_lost_race_is_409_and_writes_nothing(
    client: TestClient[Any, Any], kv: EmbeddedKV, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another change lands between the read and the CAS: the CAS fails, the other stays."""
    store = RingStore(kv, PREFIX)
    real = RingStore.change
    other = RingSpec(2, (*SPEC.shards, ShardSpec("s5", "embedded:s5")), SPEC.shards, "migrating")

    async def racing(self: RingStore, spec: RingSpec, expected: int) -> tuple[bool, int]:
        assert (await real(self, other, expected))[0]  # the other operator, first
        return await real(self, spec, expected)

    monkeypatch.setattr(RingStore, "change", racing)
    resp = await client.post("/v1/ring/shards", json={"url": "embedded:s2"}, headers=as_operator())
    answer = await resp.json()
    assert (resp.status, answer["error"]) == (409, "conflict"), answer
    assert "the ring changed while this change was made (it was version 1)" in answer["message"]
    stored = await store.ring()
    assert stored is not None and stored.record == other


async def test_an_unreachable_shard_is_503_naming_it(
    kv: EmbeddedKV, aiohttp_client: ClientMaker, redis_servers: list[RedisServer]
) -> None:
    spec = RingSpec(1, (ShardSpec("s0", redis_servers[0].url),))
    await RingStore(kv, PREFIX).seed(spec)
    client = await aiohttp_client(_app(kv))
    before = await _ring(kv)
    closed = await _closed_port()
    url = f"redis://127.0.0.1:{closed}/0"
    resp = await client.post("/v1/ring/shards", json={"url": url}, headers=as_operator())
    answer = await resp.json()
    assert (resp.status, answer["error"]) == (503, "shard_unreachable"), answer
    assert f"the new shard does not answer: {url}: " in answer["message"]
    assert await _ring(kv) == before
    # A shard that answers joins.
    resp = await client.post(
        "/v1/ring/shards", json={"url": redis_servers[1].url}, headers=as_operator()
    )
    assert resp.status == 202, await resp.json()
    spec_now, _ = await _ring(kv)
    assert spec_now is not None and spec_now.shards[-1].url == redis_servers[1].url


async def test_pause_resume_throttle(client: TestClient[Any, Any], kv: EmbeddedKV) -> None:
    store = RingStore(kv, PREFIX)
    resp = await client.post("/v1/ring/pause", headers=as_operator())
    assert resp.status == 200
    assert (await resp.json())["control"] == {"paused": True, "throttle_per_s": 50_000.0}
    resp = await client.put("/v1/ring/throttle", json={"users_per_s": 1500}, headers=as_operator())
    assert (await resp.json())["control"] == {"paused": True, "throttle_per_s": 1500.0}
    assert await store.control() == MoverControl(True, 1500.0)
    resp = await client.post("/v1/ring/resume", headers=as_operator())
    assert (await resp.json())["control"] == {"paused": False, "throttle_per_s": 1500.0}
    assert await store.control() == MoverControl(False, 1500.0)


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_probe(redis_servers: list[RedisServer]) -> None:
    assert await unreachable(redis_servers[0].url, 2.0) is None
    assert await unreachable("embedded:s9") is None
    closed = await _closed_port()
    why = await unreachable(f"redis://127.0.0.1:{closed}/0", 2.0)
    assert why is not None and why.startswith(f"redis://127.0.0.1:{closed}/0: ")

    # A socket that takes the connection and never answers: bounded by the timeout.
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        started = asyncio.get_running_loop().time()
        why = await unreachable(f"redis://127.0.0.1:{port}/0", 0.3)
        took = asyncio.get_running_loop().time() - started
    finally:
        for w in held:
            w.close()
        silent.close()
        await silent.wait_closed()
    assert why is not None and str(port) in why, why
    assert took < 2.0


async def test_no_ring_or_an_unreadable_one_is_503(
    kv: EmbeddedKV, aiohttp_client: ClientMaker
) -> None:
    client = await aiohttp_client(_app(kv))
    for method, path, body in (
        ("GET", "/v1/ring", None),
        ("POST", "/v1/ring/shards", {"url": "embedded:s2"}),
    ):
        resp = await client.request(method, path, json=body, headers=as_operator())
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (503, "no_ring"), answer
    assert await kv.get(f"{PREFIX}/presence/ring") is None
    await kv.put(f"{PREFIX}/presence/ring", b'{"version": 0}')
    resp = await client.delete("/v1/ring/shards/s0", headers=as_operator())
    answer = await resp.json()
    assert (resp.status, answer["error"]) == (503, "unreadable_ring"), answer
    assert f"{PREFIX}/presence/ring does not hold a readable ring spec" in answer["message"]
    entry = await kv.get(f"{PREFIX}/presence/ring")
    assert entry is not None and entry.value == b'{"version": 0}'
