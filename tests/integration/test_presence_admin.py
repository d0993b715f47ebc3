"""Presence as operators and other services read it through the scheduler's admin API: the
event stream (``GET /v1/presence/events``, ``imctl presence events``) and batch lookups
(``POST /v1/presence/lookup``, ``imctl presence who UID...``), on the embedded backend
and on real Redis."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import aiohttp
import pytest

from control.testing import RedisServer
from tests.cluster import LocalCluster, cluster_settings


def _settings(backend: str, redis_servers: list[RedisServer] | None) -> Any:
    presence: dict[str, Any] = {"flush_s": 0.1}
    if backend == "redis":
        assert redis_servers
        presence |= {
            "backend": "redis",
            "shards": [{"id": f"s{i}", "url": s.url} for i, s in enumerate(redis_servers)],
            "key_prefix": f"ev{uuid.uuid4().hex[:8]}:",
        }
    return cluster_settings(nodes=1, presence=presence)


@pytest.fixture(params=["embedded", "redis"])
def settings(request: pytest.FixtureRequest) -> Any:
    servers = request.getfixturevalue("redis_servers") if request.param == "redis" else None
    return _settings(request.param, servers)


async def _lines(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert line, f"stream ended after {out}"
        if line.strip():  # blank lines are keepalives
            out.append(json.loads(line))
    return out


@pytest.mark.timeout(60)
async def test_tail_sees_a_login_and_its_logout(settings: Any) -> None:
    async with LocalCluster(settings, scheduler=True) as c, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{settings.scheduler.port}"
        async with http.get(f"{base}/v1/presence/events", params={"uid": "alice"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/x-ndjson")
            bob = await c.connect(http, "bob", "n0")  # filtered out
            ws, welcome = await c.connect(http, "alice", "n0")
            await ws.close()
            online, offline = await _lines(resp, 2)
            await bob[0].close()
        assert (online["kind"], online["uid"], online["node"]) == ("online", "alice", "n0")
        assert online["conn"] == offline["conn"] == welcome["conn"]
        assert offline["kind"] == "offline" and offline["reason"]
        assert online["at"] > 0


@pytest.mark.timeout(60)
async def test_count_ends_the_stream_and_bad_parameters_are_400() -> None:
    settings = _settings("embedded", None)
    async with LocalCluster(settings, scheduler=True) as c, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{settings.scheduler.port}"
        for params, field in (
            ({"uid": "a b"}, "uid"),
            ({"count": "0"}, "count"),
            ({"count": "many"}, "count"),
            ({"count": "\u00b2"}, "count"),  # a digit to str.isdigit, not to int()
            ({"count": "1" * 40}, "count"),
        ):
            async with http.get(f"{base}/v1/presence/events", params=params) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["field"] == field, (params, body)
        async with http.get(f"{base}/v1/presence/events", params={"count": "2"}) as resp:
            kept = [await c.connect(http, uid, "n0") for uid in ("u1", "u2", "u3")]
            body = await asyncio.wait_for(resp.read(), 10)  # ends after two events
            assert len(kept) == 3
        got = [json.loads(line) for line in body.splitlines() if line]
        assert [(e["kind"], e["uid"]) for e in got] == [("online", "u1"), ("online", "u2")], got


@pytest.mark.timeout(60)
async def test_cli_tails_events() -> None:
    settings = _settings("embedded", None)
    async with LocalCluster(settings, scheduler=True) as c, aiohttp.ClientSession() as http:
        server = f"http://127.0.0.1:{settings.scheduler.port}"
        argv = ["-m", "control.cli", "presence", "events", "--server", server]
        table = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--uid", "carol", "--count", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        as_json = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--count", "1", "--output", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for tail in (table, as_json):  # both say so once they follow
            assert tail.stderr is not None
            notice = await asyncio.wait_for(tail.stderr.readline(), 20)
            assert notice.startswith(b"# following presence events at "), notice
        _, welcome = await c.connect(http, "carol", "n0")
        out, err = await asyncio.wait_for(table.communicate(), 20)
        assert table.returncode == 0, err
        (line,) = out.decode().splitlines()
        assert line.split()[1:5] == ["online", "carol", "phone", "n0"], line
        assert welcome["conn"] in line
        out, err = await asyncio.wait_for(as_json.communicate(), 20)
        assert as_json.returncode == 0, err
        assert json.loads(out)["conn"] == welcome["conn"]
        endless = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert endless.stderr is not None
        await asyncio.wait_for(endless.stderr.readline(), 20)
    # The cluster has stopped: a tail without --count says the stream ended, exit 1.
    out, err = await asyncio.wait_for(endless.communicate(), 20)
    assert endless.returncode == 1, (out, err)
    assert b"the scheduler ended the stream after " in err, err  # (carol going offline)


@pytest.mark.timeout(60)
async def test_shutdown_ends_open_tails_at_once() -> None:
    """A tail has no end of its own: shutdown must end it rather than wait for it."""
    settings = _settings("embedded", None)
    async with aiohttp.ClientSession() as http:
        async with LocalCluster(settings, scheduler=True):
            base = f"http://127.0.0.1:{settings.scheduler.port}"
            resp = await http.get(f"{base}/v1/presence/events")
            assert resp.status == 200
            started = time.monotonic()
        assert time.monotonic() - started < 3.0
        try:
            rest = await asyncio.wait_for(resp.content.read(), 5)
        except aiohttp.ClientPayloadError:
            rest = b""
        assert rest.strip() == b""
        resp.release()


@pytest.mark.timeout(60)
async def test_open_tails_are_capped() -> None:
    """Each tail holds a Redis connection per shard in a blocking read for most of the
    time: past the cap a new one is refused, so tails cannot starve who/count (and the
    pool) of connections."""
    settings = cluster_settings(nodes=1, scheduler={"max_event_tails": 2})
    async with LocalCluster(settings, scheduler=True), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{settings.scheduler.port}/v1/presence/events"
        first, second = await http.get(url), await http.get(url)
        assert first.status == second.status == 200
        async with http.get(url.replace("/v1/presence/events", "/metrics")) as metrics:
            assert "imctl_scheduler_event_tails 2.0" in await metrics.text()
        async with http.get(url) as third:
            assert third.status == 503 and third.headers["Retry-After"]
            assert "2 event tails" in (await third.json())["message"]
        first.close()  # a reader leaving frees its place
        for _ in range(50):
            async with http.get(url, params={"count": "1"}) as again:
                if again.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert again.status == 200
        second.close()


@pytest.mark.timeout(60)
async def test_batch_lookup(settings: Any) -> None:
    async with LocalCluster(settings, scheduler=True) as c, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{settings.scheduler.port}/v1/presence/lookup"
        phone, w1 = await c.connect(http, "alice", "n0")
        laptop, w2 = await c.connect(http, "alice", "n0", device="laptop")
        bob, _ = await c.connect(http, "bob", "n0")
        uids = ["alice", "bob", "carol", "alice"]  # a repeat is answered once
        async with http.post(url, json={"uids": uids}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert sorted(body["online"]) == ["alice", "bob"] and body["offline"] == ["carol"]
        assert {d["conn"] for d in body["online"]["alice"]} == {w1["conn"], w2["conn"]}
        assert body["online"]["bob"][0] | {"conn": "-"} == {
            "uid": "bob", "device": "phone", "node": "n0", "conn": "-", "epoch": c.node("n0").epoch,
            "status": "online", "region": "north", "platform": "",
        }  # fmt: skip
        for ws in (phone, laptop, bob):
            await ws.close()


@pytest.mark.timeout(60)
async def test_batch_lookup_bad_bodies_are_400() -> None:
    settings = _settings("embedded", None)
    async with LocalCluster(settings, scheduler=True), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{settings.scheduler.port}/v1/presence/lookup"
        for body, says in (
            (b"{nope", "body is not JSON"),
            (b"[]", "uids: a list of 1 to 10000 uids"),
            (b'{"uids": []}', "uids: a list of 1 to 10000 uids"),
            (b'{"uids": "alice"}', "uids: a list of 1 to 10000 uids"),
            (json.dumps({"uids": ["u"] * 10_001}).encode(), "uids: a list of 1 to 10000 uids"),
            (b'{"uids": ["ok", "a b"]}', "uids[1]: 'a b' is not a uid"),
            (b'{"uids": ["ok", 5]}', "uids[1]: 5 is not a uid"),
        ):
            async with http.post(url, data=body) as resp:
                answer = await resp.json()
                assert resp.status == 400 and answer["message"].startswith(says), answer


@pytest.mark.timeout(60)
async def test_cli_who_several_users() -> None:
    settings = _settings("embedded", None)
    async with LocalCluster(settings, scheduler=True) as c, aiohttp.ClientSession() as http:
        server = f"http://127.0.0.1:{settings.scheduler.port}"
        ws, welcome = await c.connect(http, "dave", "n0")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "presence", "who", "dave", "erin",
            "--server", server,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        lines = out.decode().splitlines()
        assert lines[0].split()[:4] == ["UID", "DEVICE", "NODE", "CONN"]
        assert lines[1].split()[:4] == ["dave", "phone", "n0", welcome["conn"]]
        assert lines[-1] == "1 of 2 online; offline: erin"
        await ws.close()


@pytest.mark.timeout(60)
async def test_tails_and_lookups_need_a_viewer_token() -> None:
    grants = [{"name": "v", "token": "viewer-token-0123456789", "role": "viewer"}]
    settings = cluster_settings(nodes=1, admin={"tokens": grants})
    async with LocalCluster(settings, scheduler=True), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{settings.scheduler.port}/v1"
        for method, path, body in (
            ("GET", "/presence/events?count=1", None),
            ("POST", "/presence/lookup", {"uids": ["a"]}),
            ("GET", "/explain?uid=a&device=d&platform=ios&version=1.0", None),
        ):
            async with http.request(method, base + path, json=body) as resp:
                assert resp.status == 401, (path, await resp.text())
            viewer = {"Authorization": "Bearer viewer-token-0123456789"}
            async with http.request(method, base + path, json=body, headers=viewer) as resp:
                assert resp.status == 200, path  # (a tail stays open: left unread here)
