"""Every operator verb's output, exit code and message, byte for byte, against a stand-in
admin API on loopback: the CLI's rendering and its admin client are checked without a
cluster (the e2e tests run the same verbs against a real one)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from control.cli.admin_client import AdminClient, AdminError
from tests.stand_in import run, served_in_thread

TOKEN = "t" * 24
FAR = 4_000_000_000.0  # a last_seen / reported_at in the future shows as "0s ago"
AT = 1_700_000_000.25

NODES = {
    "cluster": "test",
    "held": True,
    "releases": ["canary-5"],
    "nodes": [
        {
            "id": "north-1", "region": "north", "zone": "a", "pool": "main", "version": "1.0",
            "state": "up", "conns": 3, "capacity": 100, "pending": 1, "load": 0.031,
            "static": False, "reported_at": FAR,
        },
        {
            "id": "south-10", "region": "south", "zone": "", "pool": "canary", "version": "1.1",
            "state": "draining", "conns": 0, "capacity": 50, "pending": 0, "load": None,
            "static": True, "reported_at": None,
        },
    ],
}  # fmt: skip
DEVICE = {
    "device": "phone", "node": "north-1", "conn": "c1", "status": "online", "region": "north",
    "platform": "", "last_seen": FAR,
}  # fmt: skip
EXPLAIN = {
    "uid": "alice", "platform": "ios", "version": "5.1.0", "region": "north",
    "region_from": "ip", "ip": "10.0.0.1", "track": "canary-5", "strategy": "gray",
    "releases": [
        {"release": "canary-5", "state": "running", "outcome": "in", "bucket": 12,
         "cutoff": 500, "chosen": True},
        {"release": "old", "state": "paused", "outcome": "paused", "bucket": 9000,
         "cutoff": 100, "chosen": False},
    ],
    "ranking": ["north", "south"],
    "regions": [{"region": "north", "nodes": 2, "with_room": 1},
                {"region": "south", "nodes": 1, "with_room": 0}],
    "would_connect_in": "north",
}  # fmt: skip
EVENT = {
    "kind": "online", "uid": "alice", "device": "phone", "node": "north-1", "conn": "c1",
    "at": AT, "reason": None,
}  # fmt: skip


def _app() -> web.Application:
    async def check(request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "unauthorized", "message": "a viewer token is needed"}),
                content_type="application/json",
            )

    async def nodes(request: web.Request) -> web.Response:
        await check(request)
        return web.json_response(NODES)

    async def drain(request: web.Request) -> web.Response:
        await check(request)
        node = request.match_info["node"]
        if node == "nowhere":
            return web.json_response({"error": "not_found", "message": "no node"}, status=404)
        if request.method == "DELETE":
            return web.json_response({"node": node, "was_draining": node == "north-1"})
        body = await request.json()
        return web.json_response({"node": node, "over_s": body["over_s"], "by": "sre"})

    async def who(request: web.Request) -> web.Response:
        await check(request)
        uid = request.match_info["uid"]
        devices = [DEVICE] if uid == "alice" else []
        return web.json_response({"uid": uid, "devices": devices})

    async def lookup(request: web.Request) -> web.Response:
        await check(request)
        uids = (await request.json())["uids"]
        online = {u: [DEVICE] for u in uids if u == "alice"}
        offline = [u for u in uids if u not in online]
        return web.json_response({"online": online, "offline": offline})

    async def count(request: web.Request) -> web.Response:
        await check(request)
        by = request.query.get("by")
        if by is None:
            return web.json_response({"total": 3})
        return web.json_response({"total": 3, "by": by, "counts": {"north": 2, "": 1}})

    async def explain(request: web.Request) -> web.Response:
        await check(request)
        return web.json_response({**EXPLAIN, "query": dict(request.query)})

    async def events(request: web.Request) -> web.StreamResponse:
        await check(request)
        if request.query.get("uid") == "broken":
            return web.Response(text="<html>gateway</html>", status=502)
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"\n")  # a keepalive
        await resp.write(json.dumps(EVENT).encode() + b"\n")
        if request.query.get("uid") == "garbled":
            await resp.write(b"not json\n")
        await resp.write_eof()
        return resp

    async def odd(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="not json at all", status=200)

    app = web.Application()
    app.router.add_get("/v1/nodes", nodes)
    app.router.add_post("/v1/nodes/{node}/drain", drain)
    app.router.add_delete("/v1/nodes/{node}/drain", drain)
    app.router.add_get("/v1/presence/count", count)
    app.router.add_get("/v1/presence/events", events)
    app.router.add_post("/v1/presence/lookup", lookup)
    app.router.add_get("/v1/presence/{uid}", who)
    app.router.add_get("/v1/explain", explain)
    app.router.add_get("/odd/v1/presence/{uid}", odd)
    app.router.add_get("/plain/v1/nodes", plain)
    return app


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The stand-in API on its own loop in a thread (``main`` runs its own loop)."""
    monkeypatch.delenv("IMCTL_SERVER", raising=False)
    monkeypatch.delenv("IMCTL_TOKEN", raising=False)
    with served_in_thread(_app()) as url:
        yield url


def stamp(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


NODES_TABLE = """\
NODE      REGION  ZONE  POOL    VERSION  STATE     CONNS  PENDING  LOAD  SOURCE    REPORTED
north-1   north   a     main    1.0      up        3/100  1        3.1%  registry  0s ago  
south-10  south   -     canary  1.1      draining  0/50   0        -     static    -       

2 nodes in cluster test (self-preservation: holding last view); releases: canary-5
"""  # noqa: W291

EXPLAIN_TEXT = """\
alice (ios 5.1.0): region north, placed by ip 10.0.0.1
track canary-5 (gray)

RELEASE   STATE    OUTCOME  BUCKET  CUTOFF          
canary-5  running  in       12      500     <- track
old       paused   paused   9000    100             

regions in preference order: north, south
REGION  NODES  WITH ROOM
north   2      1        
south   1      0        

would connect in: north
"""  # noqa: W291

CASES: list[tuple[list[str], int, str, str]] = [
    (["nodes"], 0, NODES_TABLE, ""),
    (["access", "drain", "north-1", "--over", "2m"], 0,
     "north-1: draining over 120s (requested by sre)\n", ""),
    (["access", "undrain", "north-1"], 0, "north-1: taking clients again (was draining)\n", ""),
    (["access", "undrain", "south-10"], 0,
     "south-10: taking clients again (was not draining)\n", ""),
    (["presence", "who", "alice"], 0,
     "DEVICE  NODE     CONN  STATUS  REGION  PLATFORM  LAST SEEN\n"
     "phone   north-1  c1    online  north   -         0s ago   \n", ""),
    (["presence", "who", "bob"], 0, "bob: offline\n", ""),
    (["presence", "who", "alice", "bob", "carol"], 0,
     "UID    DEVICE  NODE     CONN  STATUS  REGION\n"
     "alice  phone   north-1  c1    online  north \n\n"
     "1 of 3 online; offline: bob, carol\n", ""),
    (["presence", "who", "bob", "carol"], 0, "0 of 2 online; offline: bob, carol\n", ""),
    (["presence", "count"], 0, "3 online\n", ""),
    (["presence", "count", "--by", "region"], 0,
     "REGION  ONLINE\nnorth   2     \n(none)  1     \n\n3 online in all\n", ""),
    (["explain", "--uid", "alice", "--platform", "ios", "--version", "5.1.0", "--ip",
      "10.0.0.1"], 0, EXPLAIN_TEXT, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "out", "err"), CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_verb_output(
    server: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    out: str,
    err: str,
) -> None:
    assert run(capsys, [*argv, "--server", server, "--token", TOKEN]) == (code, out, err)


@pytest.mark.parametrize("argv", [case[0] for case in CASES], ids=lambda v: " ".join(v))
def test_verb_json_is_the_answer(
    server: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, [*argv, "--server", server, "--token", TOKEN, "-o", "json"])
    assert (code, err) == (0, "")
    assert out.endswith("}\n")
    assert out == json.dumps(json.loads(out), indent=2, sort_keys=True) + "\n"


def test_the_token_comes_from_the_environment(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMCTL_TOKEN", TOKEN)
    monkeypatch.setenv("IMCTL_SERVER", server + "/")
    assert run(capsys, ["presence", "count"]) == (0, "3 online\n", "")


def test_http_errors_carry_the_servers_message(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, ["nodes", "--server", server]) == (
        1, "", f"imctl: {server}/v1/nodes: HTTP 401: a viewer token is needed\n"
    )  # fmt: skip
    assert run(capsys, ["access", "drain", "nowhere", "--server", server, "--token", TOKEN]) == (
        1, "", f"imctl: {server}/v1/nodes/nowhere/drain: HTTP 404: no node\n"
    )  # fmt: skip
    assert run(capsys, ["presence", "events", "--server", server]) == (
        1, "", f"imctl: {server}/v1/presence/events: HTTP 401: a viewer token is needed\n"
    )  # fmt: skip
    argv = ["presence", "events", "--uid", "broken", "--server", server, "--token", TOKEN]
    assert run(capsys, argv) == (
        1, "", f"imctl: {server}/v1/presence/events?uid=broken: HTTP 502: <html>gateway</html>\n"
    )  # fmt: skip


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = run(capsys, ["presence", "count", "--server", url])
    assert (code, out) == (1, "")
    assert err.startswith(f"imctl: cannot reach {url}/v1/presence/count: ") and err.count("\n") == 1
    code, out, err = run(capsys, ["presence", "events", "--server", url])
    assert (code, out) == (1, "")
    assert err.startswith(f"imctl: cannot reach {url}/v1/presence/events: ")
    assert err.count("\n") == 1


def test_another_kind_of_server_is_one_line(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, ["presence", "who", "alice", "--server", server + "/odd"]) == (
        1, "", f"imctl: unexpected answer from {server}/odd (KeyError('devices')): "
        "is it an imctl scheduler?\n",
    )  # fmt: skip
    assert run(capsys, ["nodes", "--server", server + "/plain"]) == (
        1, "", f"imctl: unexpected answer from {server}/plain (KeyError('nodes')): "
        "is it an imctl scheduler?\n",
    )  # fmt: skip


def test_events_tail(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{server}/v1/presence/events"
    follow = f"# following presence events at {url}?count=1 (Ctrl-C stops)\n"
    line = f"{stamp(AT)} online  alice phone north-1 c1 \n"
    argv = ["presence", "events", "--count", "1", "--server", server, "--token", TOKEN]
    assert run(capsys, argv) == (0, line, follow)
    assert run(capsys, [*argv, "-o", "json"]) == (0, json.dumps(EVENT) + "\n", follow)
    # Without --count the stream's end is the scheduler going away: exit 1, said so.
    argv = ["presence", "events", "--server", server, "--token", TOKEN]
    ended = f"imctl: {url}: the scheduler ended the stream after 1 event(s)\n"
    following = f"# following presence events at {url} (Ctrl-C stops)\n"
    assert run(capsys, argv) == (1, line, following + ended)
    argv = ["presence", "events", "--uid", "garbled", "--server", server, "--token", TOKEN]
    garbled = f"{url}?uid=garbled"
    assert run(capsys, argv) == (
        1, line, f"# following presence events at {garbled} (Ctrl-C stops)\n"
        f"imctl: {garbled}: not a presence event: b'not json\\n'\n",
    )  # fmt: skip


def test_explain_sends_the_clients_fields(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", "--uid", "alice", "--platform", "ios", "--version", "5.1.0"]
    code, out, _ = run(
        capsys, [*argv, "--region", "north", "--server", server, "--token", TOKEN, "-o", "json"]
    )
    assert code == 0
    query: dict[str, Any] = json.loads(out)["query"]
    assert query == {
        "uid": "alice", "device": "cli-1", "platform": "ios", "version": "5.1.0",
        "region": "north",
    }  # fmt: skip


def test_the_admin_client_raises_one_error_type(server: str) -> None:
    """Every failed call is an AdminError: its text is the line shown, its status the
    server's (None when the server was not reached)."""
    with pytest.raises(AdminError) as err:
        AdminClient(server, None).nodes()
    assert (err.value.status, err.value.url) == (401, f"{server}/v1/nodes")
    assert str(err.value) == f"{server}/v1/nodes: HTTP 401: a viewer token is needed"
    with pytest.raises(AdminError) as err:
        AdminClient(server, TOKEN).undrain("nowhere")
    assert err.value.status == 404 and str(err.value).endswith(": HTTP 404: no node")
    assert AdminClient(server, TOKEN).count("region")["counts"] == {"north": 2, "": 1}
    with pytest.raises(AdminError) as err:
        AdminClient("http://127.0.0.1:1", TOKEN).count(None)
    assert err.value.status is None and str(err.value).startswith("cannot reach ")
