"""POST /v1/nodes/rebalance: operator only, bad bodies refused naming what is wrong, nothing
written unless accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.admin.config import AdminConfig
from control.admin.routes import mount
from control.common.auth import Grant, TokenTable
from control.common.kv.embedded import EmbeddedKV
from control.common.rebalance import rebalance_requests
from control.scheduler.state import KV

PREFIX = "/t"
VIEWER, OPERATOR = "v" * 40, "o" * 40


@pytest.fixture
async def kv() -> AsyncIterator[EmbeddedKV]:
    store = EmbeddedKV()
    await store.connect()
    yield store
    await store.close()


@pytest.fixture
async def client(kv: EmbeddedKV, aiohttp_client: Any) -> TestClient[Any, Any]:
    grants = TokenTable((Grant("ops", VIEWER, "viewer"), Grant("sre", OPERATOR, "operator")))
    app = web.Application()
    mount(AdminConfig("t", PREFIX, frozenset(), 1, grants))(app)
    app[KV] = kv
    return await aiohttp_client(app)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def stored(kv: EmbeddedKV) -> int:
    records, _ = await rebalance_requests(kv, PREFIX).list()
    return len(records)


async def test_roles_and_bad_bodies_write_nothing(
    client: TestClient[Any, Any], kv: EmbeddedKV
) -> None:
    url = "/v1/nodes/rebalance"
    assert (await client.post(url)).status == 401
    assert (await client.post(url, headers=auth("x" * 40))).status == 401
    assert (await client.post(url, headers=auth(VIEWER))).status == 403
    for body, what in [
        ("{", "not JSON"),
        ("[1]", "JSON object"),
        ('{"max_rate": -1}', "max_rate"),
        ('{"until_ratio": 0.5}', "until_ratio"),
        ('{"max_rate": "fast"}', "max_rate"),
    ]:
        resp = await client.post(url, data=body, headers=auth(OPERATOR))
        answer = await resp.json()
        assert resp.status == 400 and what in answer["message"], (body, answer)
    assert await stored(kv) == 0

    resp = await client.post(url, json={"max_rate": 20, "until_ratio": 1.2}, headers=auth(OPERATOR))
    answer = await resp.json()
    assert resp.status == 200 and answer["rebalance"] and answer["by"] == "sre", answer
    assert await stored(kv) == 1
