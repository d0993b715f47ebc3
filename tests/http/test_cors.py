"""CORS on /v1/endpoint for the configured origins (preflight included), and the access
nodes' WebSocket Origin check against the same list."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from control.launch import scheduler_app
from control.scheduler.cors import preflight
from tests.cluster import LocalCluster, cluster_settings
from tests.http.test_endpoint import OK, settings
from tests.tokens import as_user

APP = "https://app.example.com"
ORIGINS = frozenset({APP, "http://127.0.0.1:8000"})


def test_preflight_answers() -> None:
    ok = preflight(ORIGINS, APP, "GET", "authorization", 600)
    assert ok.status == 204 and not ok.error
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert ok.headers["Access-Control-Allow-Headers"] == "Authorization"
    assert ok.headers["Access-Control-Max-Age"] == "600"
    assert preflight(ORIGINS, APP, "GET", None, 600).status == 204  # no extra headers
    assert preflight(ORIGINS, APP, "GET", " Authorization ,", 600).status == 204
    other = preflight(ORIGINS, "https://evil.example", "GET", "authorization", 600)
    assert (other.status, other.error) == (403, "forbidden_origin")
    assert "Access-Control-Allow-Origin" not in other.headers
    assert preflight(ORIGINS, APP, "DELETE", None, 600).error == "forbidden_method"
    header = preflight(ORIGINS, APP, "GET", "authorization, x-debug", 600)
    assert header.error == "forbidden_header" and "x-debug" in header.message
    assert "cors.origins is empty" in preflight(frozenset(), APP, "GET", None, 600).message
    assert preflight(ORIGINS, None, None, None, 600).headers == {"Allow": "GET, OPTIONS"}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    app = scheduler_app(settings(cors={"origins": [APP, "http://127.0.0.1:8000"]}))
    return await aiohttp_client(app)


async def test_preflight_and_actual_requests_over_http(client: TestClient) -> None:
    asking = {"Origin": APP, "Access-Control-Request-Method": "GET"}
    resp = await client.options(
        "/v1/endpoint", headers={**asking, "Access-Control-Request-Headers": "authorization"}
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Access-Control-Allow-Methods"] == "GET"
    assert resp.headers["Access-Control-Allow-Headers"] == "Authorization"

    resp = await client.options(
        "/v1/endpoint", headers={**asking, "Origin": "https://evil.example"}
    )
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    body = await resp.json()
    assert body["error"] == "forbidden_origin" and "cors.origins" in body["message"]

    resp = await client.get("/v1/endpoint", params=OK, headers={**as_user("alice"), "Origin": APP})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Vary"] == "Origin"
    assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    # A refusal reaches the page too, so it can say why.
    resp = await client.get("/v1/endpoint", params=OK, headers={"Origin": APP})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == APP

    resp = await client.get(
        "/v1/endpoint", params=OK, headers={**as_user("alice"), "Origin": "https://evil.example"}
    )
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_no_origins_configured_means_no_cors(aiohttp_client: Any) -> None:
    client = await aiohttp_client(scheduler_app(settings()))
    resp = await client.get("/v1/endpoint", params=OK, headers={**as_user("alice"), "Origin": APP})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.options(
        "/v1/endpoint", headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
    )
    assert resp.status == 403 and "cors.origins is empty" in (await resp.json())["message"]


@pytest.mark.timeout(30)
async def test_access_nodes_check_the_websocket_origin() -> None:
    cluster = LocalCluster(cluster_settings(nodes=1, cors={"origins": [APP]}))
    async with cluster as c, aiohttp.ClientSession() as http:
        for origin in (APP, None):  # a page of the list; a native app sends none
            headers = {"Origin": origin} if origin else {}
            ws = await http.ws_connect(c.ws_url("n0", c.ticket("ann", "d1", "n0")), headers=headers)
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            await ws.close()
        url = c.ws_url("n0", c.ticket("ann", "d2", "n0"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        async with http.get(url, headers={"Origin": "https://evil.example"}) as resp:
            assert (await resp.json())["error"] == "forbidden_origin"
