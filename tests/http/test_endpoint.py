"""GET /v1/endpoint and the operator endpoints, through the real aiohttp app."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from control.common.geoip import GeoDatabase
from control.common.kv.embedded import EmbeddedKV
from control.common.registry import NodeRecord, Registry
from control.launch import scheduler_app as create_app
from control.scheduler.state import CONFIG, ENGINE
from control.settings import Settings, parse_settings
from tests.geodb import write_geo_db
from tests.tokens import CLIENT_AUTH, as_user

BASE: dict[str, Any] = {
    "regions": {
        "known": ["north", "south"],
        "cidrs": {"10.1.0.0/16": "north", "10.2.0.0/16": "south"},
        "preference": {"north": ["north", "south"], "south": ["south", "north"]},
    },
    "registry": {
        "static_nodes": [
            {"id": "n1", "endpoint": "ws://127.0.0.1:1/ws", "region": "north", "zone": "a"},
            {"id": "n2", "endpoint": "ws://127.0.0.1:2/ws", "region": "north", "zone": "b"},
            {"id": "s1", "endpoint": "ws://127.0.0.1:3/ws", "region": "south", "zone": "a"},
        ]
    },
    "scheduler": {"trusted_proxies": ["127.0.0.0/8"], "rebuild_s": 0},
    "tickets": {"active_kid": "k1", "keys": {"k1": "0123456789abcdef-test"}},
    "client_auth": CLIENT_AUTH,
}
OK = {"uid": "alice", "device": "phone-1", "platform": "ios", "version": "5.1.0"}
AS_ALICE = as_user("alice")  # every test client below proves alice unless told otherwise


def settings(**over: Any) -> Settings:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_settings(data, "test")


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(settings()), headers=AS_ALICE)


async def test_contract_shape(client: TestClient) -> None:
    resp = await client.get("/v1/endpoint", params={**OK, "region": "south"})
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {
        "node",
        "endpoint",
        "region",
        "track",
        "ticket",
        "expires_in",
        "fallbacks",
        "heartbeat",
        "backoff",
    }
    assert body["node"] == "s1" and body["region"] == "south" and body["track"] == "stable"
    assert body["heartbeat"] == {"interval_s": 30.0, "timeout_s": 90.0}
    assert set(body["backoff"]) == {"base_s", "factor", "jitter", "max_s"}
    assert {f["node"] for f in body["fallbacks"]} <= {"n1", "n2"} and len(body["fallbacks"]) == 2
    keys = settings().tickets.ticket_keys()
    ticket = keys.verify(body["ticket"], "s1", time.time())
    assert (ticket.uid, ticket.device) == ("alice", "phone-1")
    for fb in body["fallbacks"]:
        assert keys.verify(fb["ticket"], fb["node"], time.time()).uid == "alice"


async def test_region_from_trusted_forwarded_for(client: TestClient) -> None:
    resp = await client.get("/v1/endpoint", params=OK, headers={"X-Forwarded-For": "10.2.3.4"})
    assert (await resp.json())["region"] == "south"
    resp = await client.get("/v1/endpoint", params=OK, headers={"X-Forwarded-For": "10.1.3.4"})
    assert (await resp.json())["region"] == "north"


async def test_region_from_the_geo_database(aiohttp_client: Any, tmp_path: Path) -> None:
    db = write_geo_db(tmp_path / "city.mmdb")
    geoip = {"database": str(db), "places": {"CN-GD": "south", "continent:EU": "north"}}
    client = await aiohttp_client(create_app(settings(regions={"geoip": geoip})), headers=AS_ALICE)

    async def region(forwarded_for: str) -> str:
        resp = await client.get(
            "/v1/endpoint", params=OK, headers={"X-Forwarded-For": forwarded_for}
        )
        assert resp.status == 200
        return str((await resp.json())["region"])

    assert await region("192.0.2.9") == "south"  # CN-GD
    assert await region("198.51.100.9") == "north"  # FR, by its continent
    assert await region("10.2.0.1") == "south"  # the CIDR table comes first
    metrics = await (await client.get("/metrics")).text()
    gauge = re.search(r"^imctl_scheduler_geoip_build_timestamp_seconds (\S+)$", metrics, re.M)
    assert gauge is not None
    assert float(gauge.group(1)) == GeoDatabase(str(db)).info.build_epoch


@pytest.mark.parametrize(
    "params,field",
    [
        ({**OK, "uid": ""}, "uid"),
        ({k: v for k, v in OK.items() if k != "uid"}, "uid"),
        ({**OK, "uid": "x" * 129}, "uid"),
        ({**OK, "uid": "bad uid"}, "uid"),
        ({**OK, "device": ""}, "device"),
        ({**OK, "platform": "9os"}, "platform"),
        ({**OK, "version": "1.2.beta"}, "version"),
        ({**OK, "version": ""}, "version"),
        ({**OK, "region": "mars"}, "region"),
    ],
)
async def test_bad_parameters_name_the_field(
    client: TestClient, params: dict[str, str], field: str
) -> None:
    resp = await client.get("/v1/endpoint", params=params)
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == field and body["message"].startswith(field)


async def test_duplicate_parameter(client: TestClient) -> None:
    resp = await client.get("/v1/endpoint?uid=a&uid=b&device=d&platform=ios&version=1")
    assert resp.status == 400 and (await resp.json())["field"] == "uid"
    # the same parameter spelled with an escape is still the same parameter
    resp = await client.get("/v1/endpoint?uid=a&u%69d=b&device=d&platform=ios&version=1")
    assert resp.status == 400 and (await resp.json())["field"] == "uid"


async def test_query_is_form_decoded(client: TestClient) -> None:
    """Escapes are decoded (the signed ticket carries the decoded uid), ``+`` is a space
    (so not a valid device), and unknown parameters and a fragment are ignored."""
    resp = await client.get(
        "/v1/endpoint?uid=al%69ce%40home&device=d1&platform=iOS&version=5.1&x=1&region=north",
        headers=as_user("alice@home"),
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["region"] == "north"
    keys = client.app[CONFIG].tickets.ticket_keys()
    assert keys.verify(body["ticket"], body["node"], 0).uid == "alice@home"
    resp = await client.get("/v1/endpoint?uid=a&device=d+1&platform=ios&version=1")
    assert resp.status == 400 and (await resp.json())["field"] == "device"


async def test_unexpected_failure_is_a_json_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(user: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(client.app[ENGINE], "assign", broken)
    resp = await client.get("/v1/endpoint", params=OK)
    assert resp.status == 500
    body = await resp.json()
    assert body["error"] == "internal" and "bug" not in body["message"]


MALFORMED = [
    "/v1/endpoint",
    "/v1/endpoint?uid=%00&device=d&platform=ios&version=1",
    "/v1/endpoint?uid=%ff%fe&device=d&platform=ios&version=1",
    "/v1/endpoint?uid=a&device=d&platform=ios&version=1.2.3.4.5.6.7.8.9",
    "/v1/endpoint?uid=a&device=d&platform=ios&version=99999999999999999999",
    "/v1/endpoint?uid=a&device=d&platform=ios&version=1&region=",
    "/v1/endpoint?uid=a&device=d&platform=ios&version=1&region=%F0%9F%98%80",
    "/v1/endpoint?uid=" + "%41" * 5000 + "&device=d&platform=ios&version=1",
    "/v1/endpoint?uid=a&device=" + "d" * 100 + "&platform=ios&version=1",
    "/v1/endpoint?uid=a&device=d&platform=IOS&version=1",
    "/v1/endpoint?uid[]=a",
    "/v1/endpoint?=&&&=",
    "/v1/endpoint?uid=a&device=d&platform=ios&version=-1",
    "/v1/endpoint?uid=a&device=d&platform=ios&version=1.",
]


@pytest.mark.parametrize("path", MALFORMED)
async def test_malformed_never_500(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status < 500, await resp.text()
    if resp.status != 200:
        body = await resp.json()
        assert body["error"] and body["message"]


async def test_wrong_method_and_path_are_json(client: TestClient) -> None:
    resp = await client.post("/v1/endpoint", data=b"x")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    assert resp.headers["Allow"] == "GET,OPTIONS"  # OPTIONS: CORS preflights
    resp = await client.put("/v1/nodes/n1/drain")
    assert resp.status == 405 and resp.headers["Allow"] == "DELETE,POST"
    resp = await client.get("/v2/nothing")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_head_is_refused_not_a_decision(client: TestClient) -> None:
    """HEAD must be safe: answering it would count a client the node never sees (pending)
    and spend the asker's rate-limit tokens, for a body nobody reads."""
    resp = await client.head("/v1/endpoint", params=OK)
    assert resp.status == 405 and resp.headers["Allow"] == "GET,OPTIONS"
    engine = client.app[ENGINE]
    assert all(engine.pending.get(n) == 0 for n in engine.snapshot.nodes)


async def test_rate_limit_429_with_retry_after(aiohttp_client: Any) -> None:
    s = settings(scheduler={"rate_limit": {"rate_per_s": 1, "burst": 3}})
    client = await aiohttp_client(create_app(s), headers=AS_ALICE)
    statuses = [(await client.get("/v1/endpoint", params=OK)).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    resp = await client.get("/v1/endpoint", params=OK)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"] == "rate_limited"
    # Another client address (via the trusted proxy) has its own bucket.
    other = await client.get("/v1/endpoint", params=OK, headers={"X-Forwarded-For": "10.1.0.9"})
    assert other.status == 200


async def test_503_when_no_node_has_room(aiohttp_client: Any) -> None:
    s = settings(
        registry={
            "static_nodes": [
                {"id": "d1", "endpoint": "ws://h/1", "region": "north", "state": "draining"},
                {"id": "f1", "endpoint": "ws://h/2", "region": "north", "capacity": 1},
            ]
        },
        scheduler={"retry_after_s": 7},
    )
    client = await aiohttp_client(create_app(s), headers=AS_ALICE)
    first = await client.get("/v1/endpoint", params=OK)
    assert first.status == 200 and (await first.json())["node"] == "f1"
    resp = await client.get("/v1/endpoint", params=OK)  # f1 is full with our pending client
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    assert (await resp.json())["error"] == "no_capacity"


async def test_registry_nodes_and_operator_views(aiohttp_client: Any) -> None:
    kv = EmbeddedKV()
    await kv.connect()
    try:
        app = create_app(settings(registry={"static_nodes": []}), kv=kv)
        client = await aiohttp_client(app, headers=AS_ALICE)
        resp = await client.get("/readyz")
        for _ in range(50):
            if resp.status == 200:
                break
            await __import__("asyncio").sleep(0.05)
            resp = await client.get("/readyz")
        assert resp.status == 200
        assert (await client.get("/v1/endpoint", params=OK)).status == 503
        reg = await Registry(kv, "/imctl").register(
            NodeRecord(id="live", endpoint="ws://h/live", region="south", conns=3), ttl=5
        )
        for _ in range(50):
            resp = await client.get("/v1/endpoint", params=OK)
            if resp.status == 200:
                break
            await __import__("asyncio").sleep(0.05)
        assert (await resp.json())["node"] == "live"
        nodes = await (await client.get("/v1/nodes")).json()
        assert [n["id"] for n in nodes["nodes"]] == ["live"] and nodes["nodes"][0]["conns"] == 3
        metrics = await (await client.get("/metrics")).text()
        assert 'imctl_scheduler_nodes{pool="default",region="south",state="up"} 1.0' in metrics
        assert (
            'imctl_scheduler_decisions_total{placement="remote",result="ok",strategy="stable"}'
            in metrics
        )
        assert "imctl_scheduler_decision_seconds_bucket" in metrics
        assert (await client.get("/healthz")).status == 200
        await reg.close()
    finally:
        await kv.close()


async def test_admin_tokens_and_roles(aiohttp_client: Any) -> None:
    s = settings(
        admin={"tokens": [{"name": "g", "token": "viewer-token-0123456", "role": "viewer"}]}
    )
    client = await aiohttp_client(create_app(s), headers=AS_ALICE)
    assert (await client.get("/v1/nodes")).status == 401
    bad = await client.get("/v1/nodes", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    ok = await client.get("/v1/nodes", headers={"Authorization": "Bearer viewer-token-0123456"})
    assert ok.status == 200


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{nope", "body is not JSON: Expecting property name enclosed in double quotes at"),
        (b"[" * 30_000 + b"]" * 30_000, "body is not JSON: nested too deeply"),  # not ValueError
        (b'{"over_s": \xff}', "body is not JSON: not UTF-8 at byte 11"),
        (b'{"over_s": "soon"}', "over_s"),
        (b'{"over_s": -1}', "over_s"),
    ],
)
async def test_drain_body_errors_are_400(client: TestClient, body: bytes, message: str) -> None:
    resp = await client.post("/v1/nodes/n1/drain", data=body)
    assert resp.status == 400, await resp.text()
    assert message in (await resp.json())["message"]
    assert (await client.get("/v1/nodes")).status == 200


async def test_a_failed_snapshot_build_keeps_the_last_one(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = EmbeddedKV()
    await kv.connect()
    try:
        app = create_app(settings(registry={"static_nodes": []}), kv=kv)
        client = await aiohttp_client(app, headers=AS_ALICE)
        registry = Registry(kv, "/imctl")
        reg = await registry.register(
            NodeRecord(id="live", endpoint="ws://h/live", region="south"), ttl=5
        )
        for _ in range(50):
            if "live" in app[ENGINE].snapshot.nodes:
                break
            await __import__("asyncio").sleep(0.05)
        engine = app[ENGINE]

        def broken(*args: object, **kwargs: object) -> str:
            raise RuntimeError("a bug in the snapshot build")

        monkeypatch.setattr(engine, "rebuild", broken)  # fault injection, not a stand-in
        await registry.register(NodeRecord(id="new", endpoint="ws://h/new", region="south"), 5)
        for _ in range(50):
            text = await (await client.get("/metrics")).text()
            if "imctl_scheduler_snapshot_build_failures_total 1.0" in text:
                break
            await __import__("asyncio").sleep(0.05)
        assert "imctl_scheduler_snapshot_build_failures_total 1.0" in text
        resp = await client.get("/v1/endpoint", params=OK)
        assert resp.status == 200 and (await resp.json())["node"] == "live"
        await reg.close()
    finally:
        await kv.close()


async def test_presence_views_while_redis_is_down_are_503(aiohttp_client: Any) -> None:
    from control.presence.shards import build_cluster
    from control.testing import free_port

    dead = build_cluster([("s0", f"redis://127.0.0.1:{free_port()}", 1)], "redis", 90, "x:")
    client = await aiohttp_client(create_app(settings(), presence=dead), headers=AS_ALICE)
    for path in ("/v1/presence/alice", "/v1/presence/count?by=node"):
        resp = await client.get(path)
        assert resp.status == 503 and resp.headers["Retry-After"] == "1", path
        assert (await resp.json())["error"] == "unavailable"
    await dead.close()


async def test_explain_says_why_without_deciding(aiohttp_client: Any) -> None:
    """An SRE's "why is this user on the canary?": the track with every release's
    verdict (bucket against cutoff), where the region came from, and the regions the
    scheduler would try; nothing is assigned, counted or signed."""
    canary = {"id": "c1", "endpoint": "ws://127.0.0.1:4/ws", "region": "south", "pool": "canary"}
    nodes = [*BASE["registry"]["static_nodes"], canary]
    releases = [
        {"name": "old", "target": {"pool": "canary"}, "percent": 100, "state": "promoted"},
        {"name": "vip-out", "target": {"pool": "canary"}, "percent": 100,
         "exclude": {"uids": ["alice"]}},
        {"name": "canary", "target": {"pool": "canary"}, "percent": 100},
    ]  # fmt: skip
    app = create_app(settings(registry={"static_nodes": nodes}, gray={"releases": releases}))
    client = await aiohttp_client(app, headers=AS_ALICE)
    resp = await client.get("/v1/explain", params={**OK, "ip": "10.1.2.3"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["region"], body["region_from"], body["ip"]) == ("north", "ip", "10.1.2.3")
    assert body["track"] == "canary" and body["strategy"] == "gray"
    assert [(r["release"], r["outcome"], r["chosen"]) for r in body["releases"]] == [
        ("old", "not_routing", False),
        ("vip-out", "excluded", False),
        ("canary", "in_percent", True),
    ]
    assert all(0 <= r["bucket"] < 10_000 and r["cutoff"] == 10_000 for r in body["releases"])
    # The canary track has nodes only in the south: the north row is tried first.
    assert body["regions"] == [
        {"region": "south", "nodes": 1, "with_room": 1},
    ]
    assert body["would_connect_in"] == "south"
    engine = app[ENGINE]
    assert all(engine.pending.get(n) == 0 for n in engine.snapshot.nodes)

    resp = await client.get("/v1/explain", params={**OK, "uid": "bob", "region": "south"})
    body = await resp.json()
    assert (body["region"], body["region_from"]) == ("south", "parameter")
    resp = await client.get("/v1/explain", params={**OK, "uid": "vip-only"})
    body = await resp.json()
    assert (body["region"], body["region_from"]) == (None, "none")


@pytest.mark.parametrize(
    "params,field",
    [
        ({**OK, "ip": "10.1.2"}, "ip"),
        ({**OK, "version": "x"}, "version"),
        ({k: v for k, v in OK.items() if k != "uid"}, "uid"),
    ],
)
async def test_explain_bad_parameters(client: TestClient, params: Any, field: str) -> None:
    resp = await client.get("/v1/explain", params=params)
    assert resp.status == 400 and (await resp.json())["field"] == field


async def test_cli_explain(client: TestClient) -> None:
    server = str(client.make_url("")).rstrip("/")
    argv = ["explain", "--uid", "alice", "--platform", "ios", "--version", "5.1.0"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", *argv, "--ip", "10.2.0.9", "--server", server,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    text = out.decode()
    assert text.startswith("alice (ios 5.1.0): region south, placed by ip 10.2.0.9\n"), text
    assert "track stable (stable)" in text and "would connect in: south" in text
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", *argv, "--ip", "nope", "--server", server,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and b"ip: not an IP address" in err, err


async def test_explain_reads_the_query_as_the_endpoint_does(client: TestClient) -> None:
    """``%252B`` is a literal ``%2B`` in the uid, which the uid rules refuse; decoded twice
    it read as ``a+b`` and explained a user /v1/endpoint would never see."""
    query = "uid=a%252Bb&device=phone-1&platform=ios&version=5.1.0"
    endpoint = await client.get(f"/v1/endpoint?{query}")
    explain = await client.get(f"/v1/explain?{query}")
    assert endpoint.status == explain.status == 400
    assert (await endpoint.json())["field"] == (await explain.json())["field"] == "uid"
    ok = await client.get("/v1/explain?uid=a%2Bb&device=phone-1&platform=ios&version=5.1.0")
    assert (await ok.json())["uid"] == "a+b"


async def test_admin_bearer_scheme_and_messages(aiohttp_client: Any) -> None:
    token = "viewer-token-0123456"
    s = settings(admin={"tokens": [{"name": "g", "token": token, "role": "viewer"}]})
    client = await aiohttp_client(create_app(s))
    for scheme in ("Bearer", "bearer", "BEARER"):
        resp = await client.get("/v1/nodes", headers={"Authorization": f"{scheme} {token}"})
        assert resp.status == 200, scheme
    cases = {
        None: "a bearer token is required",
        "Basic dXNlcjpwYXNz": "a bearer token is required",
        "Bearer ": "a bearer token is required",
        "Bearer wrong-token-0123456": "invalid token",
        f"Bearer {token}x": "invalid token",
    }
    for header, message in cases.items():
        headers = {"Authorization": header} if header is not None else {}
        resp = await client.get("/v1/nodes", headers=headers)
        assert resp.status == 401 and (await resp.json())["message"] == message, header


async def test_drain_audit_names_the_grant(aiohttp_client: Any) -> None:
    token = "operator-token-0123456"
    s = settings(admin={"tokens": [{"name": "sre-ann", "token": token, "role": "operator"}]})
    client = await aiohttp_client(create_app(s))
    resp = await client.post(
        "/v1/nodes/n1/drain", json={"over_s": 5}, headers={"Authorization": f"bearer {token}"}
    )
    assert resp.status == 200 and (await resp.json())["by"] == "sre-ann"
