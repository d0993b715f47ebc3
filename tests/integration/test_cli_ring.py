"""``imctl presence ring ...`` against a stand-in admin API on loopback: what each verb
sends, prints (byte for byte, the progress bar included) and exits with; ``--watch``
redrawing until the ring is stable; ``--output json`` everywhere."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

import control.cli.ring as ring_cli
from control.cli.render import bar, duration
from tests.integration.test_cli_verbs import TOKEN, run

S0 = {"id": "s0", "url": "embedded:s0", "weight": 1}
S1 = {"id": "s1", "url": "embedded:s1", "weight": 1}
S2 = {"id": "s2", "url": "embedded:s2", "weight": 2}
CONTROL = {"paused": False, "throttle_per_s": 50000.0}
STABLE = {
    "ring": {"version": 1, "shards": [S0, S1], "previous": [], "state": "stable", "vnodes": 160},
    "revision": 7, "control": CONTROL, "progress": None, "moved_fraction": 0.0,
}  # fmt: skip
PROGRESS = {
    "version": 2, "moved": 2500, "expected": 10000, "rate_per_s": 1250.0, "passes": 0,
    "cursors": {"s0": "17"}, "state": "moving", "updated_at": 1.0, "by": "ctl-1",
}  # fmt: skip
MIGRATING = {
    "ring": {"version": 2, "shards": [S0, {**S1, "weight": 3}, S2], "previous": [S0, S1],
             "state": "migrating", "vnodes": 160},
    "revision": 9, "control": CONTROL, "progress": PROGRESS, "moved_fraction": 0.4321,
}  # fmt: skip


class StandIn:
    """The ring routes, answering from a script of GET answers and recording changes."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = [STABLE]
        self.gets = 0
        self.seen: list[tuple[str, str, Any]] = []

    def app(self) -> web.Application:
        async def status(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"message": "a bearer token is required"}, status=401)
            answer = self.answers[min(self.gets, len(self.answers) - 1)]
            self.gets += 1
            return web.json_response(answer)

        async def change(request: web.Request) -> web.Response:
            body = await request.json() if request.can_read_body else None
            self.seen.append((request.method, request.path, body))
            path = request.path
            if path.endswith("/shards") and body["url"].startswith("redis://127.0.0.1:1/"):
                message = f"the new shard does not answer: {body['url']}: refused"
                return web.json_response(
                    {"error": "shard_unreachable", "message": message}, status=503
                )
            if path.endswith("/shards/s9"):
                return web.json_response({"message": "no shard 's9' on the ring"}, status=404)
            if body is not None and body.get("weight", 1) <= 0:
                message = f"weight: a whole number from 1 to 100, not {body['weight']}"
                return web.json_response({"message": message}, status=400)
            if path.endswith("/shards/s0") and request.method == "DELETE":
                return web.json_response(
                    {"message": "ring version 2 is still migrating"}, status=409
                )
            if path.endswith(("/pause", "/resume", "/throttle")):
                control = {
                    "paused": path.endswith("/pause"),
                    "throttle_per_s": (body or {}).get("users_per_s", 50000.0),
                }
                return web.json_response({"control": control})
            ring = MIGRATING["ring"]
            if request.method == "POST":
                added = {
                    "id": body.get("id", "s2"),
                    "url": body["url"],
                    "weight": body.get("weight", 1),
                }
                ring = {**ring, "shards": [S0, S1, added]}
            elif request.method == "DELETE":
                ring = {**ring, "shards": [S0]}
            return web.json_response({"ring": ring}, status=202)

        app = web.Application()
        app.router.add_get("/v1/ring", status)
        app.router.add_route("*", "/v1/ring/{tail:.*}", change)
        return app


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, StandIn]]:
    monkeypatch.delenv("IMCTL_SERVER", raising=False)
    monkeypatch.delenv("IMCTL_TOKEN", raising=False)
    state = StandIn()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(state.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="ring-admin", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


STABLE_TEXT = """\
ring version 1: stable, 2 shards

SHARD  URL          WEIGHT
s0     embedded:s0  1     
s1     embedded:s1  1     
"""  # noqa: W291

MIGRATING_TEXT = """\
ring version 2: migrating from 2 to 3 shards (43.2% of users move, ideally)

SHARD  URL          WEIGHT  CHANGE       
s0     embedded:s0  1                    
s1     embedded:s1  3       weight 1 -> 3
s2     embedded:s2  2       joining      

[#######.......................]  25%  2,500 / 10,000 users moved, 7,500 remaining
rate 1,250/s, ETA 6s; pass 1
mover: running, throttle 50,000/s (by ctl-1)
"""  # noqa: W291
FOLLOW = "follow it with: imctl presence ring status --watch\n"

CASES: list[tuple[list[str], int, str, str, tuple[str, str, Any] | None]] = [
    (["status"], 0, STABLE_TEXT, "", None),
    (["add", "embedded:s2", "--weight", "2"], 0,
     "ring version 2: adding shard s2 (embedded:s2, weight 2); users whose owner becomes "
     "it move there\n" + FOLLOW, "",
     ("POST", "/v1/ring/shards", {"url": "embedded:s2", "weight": 2})),
    (["add", "redis://10.0.0.5:6379/0", "--id", "r5"], 0,
     "ring version 2: adding shard r5 (redis://10.0.0.5:6379/0, weight 1); users whose "
     "owner becomes it move there\n" + FOLLOW, "",
     ("POST", "/v1/ring/shards", {"url": "redis://10.0.0.5:6379/0", "id": "r5"})),
    (["remove", "s1"], 0,
     "ring version 2: removing shard s1; its users move to the other 1 before it leaves\n"
     + FOLLOW, "", ("DELETE", "/v1/ring/shards/s1", None)),
    (["reweight", "s1", "3"], 0, "ring version 2: shard s1 weight 1 -> 3\n" + FOLLOW, "",
     ("PUT", "/v1/ring/shards/s1", {"weight": 3})),
    (["pause"], 0, "mover paused, throttle 50,000/s\n", "",
     ("POST", "/v1/ring/pause", None)),
    (["resume"], 0, "mover running, throttle 50,000/s\n", "",
     ("POST", "/v1/ring/resume", None)),
    (["throttle", "1500"], 0, "mover running, throttle 1,500/s\n", "",
     ("PUT", "/v1/ring/throttle", {"users_per_s": 1500.0})),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "out", "err", "sent"), CASES, ids=[" ".join(c[0]) for c in CASES]
)
def test_ring_verbs(
    stand_in: tuple[str, StandIn],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    out: str,
    err: str,
    sent: tuple[str, str, Any] | None,
) -> None:
    url, state = stand_in
    argv = ["presence", "ring", *argv, "--server", url, "--token", TOKEN]
    assert run(capsys, argv) == (code, out, err)
    assert state.seen == ([sent] if sent else [])
    # --output json prints the answer itself, indented, for scripts.
    code, out, err = run(capsys, [*argv, "-o", "json"])
    assert (code, err) == (0, "")
    assert out == json.dumps(json.loads(out), indent=2, sort_keys=True) + "\n"


def test_status_while_migrating_shows_the_progress(
    stand_in: tuple[str, StandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = stand_in
    argv = ["presence", "ring", "status", "--server", url, "--token", TOKEN]
    state.answers = [MIGRATING]
    assert run(capsys, argv) == (0, MIGRATING_TEXT, "")
    # Paused: no ETA; a removed shard shows as leaving; progress of an older version and
    # no progress at all: not started.
    paused = {**MIGRATING, "control": {"paused": True, "throttle_per_s": 10.0}}
    paused["ring"] = {**MIGRATING["ring"], "shards": [S0]}
    state.answers = [paused]
    code, out, _ = run(capsys, argv)
    assert code == 0
    assert "s1     embedded:s1  1       leaving (its users move out)" in out
    assert "ETA paused" in out and "mover: paused, throttle 10/s (by ctl-1)" in out
    for progress in (None, {**PROGRESS, "version": 1}):
        state.answers = [{**MIGRATING, "progress": progress}]
        code, out, _ = run(capsys, argv)
        assert out.endswith(
            "mover: running, throttle 50,000/s; not started yet (the leader controller moves)\n"
        ), out


def test_watch_redraws_until_stable(
    stand_in: tuple[str, StandIn],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, state = stand_in
    monkeypatch.setattr(ring_cli, "WATCH_INTERVAL_S", 0.01)
    later = {**PROGRESS, "moved": 10000, "rate_per_s": 0.0}
    state.answers = [MIGRATING, {**MIGRATING, "progress": later}, STABLE]
    argv = ["presence", "ring", "status", "--watch", "--server", url, "--token", TOKEN]
    code, out, err = run(capsys, argv)
    assert (code, err, state.gets) == (0, "", 3)
    # Piped: frames follow one another, a blank line apart.
    frames = re.split(r"\n\n(?=ring version)", out)
    assert len(frames) == 3
    assert frames[0] + "\n" == MIGRATING_TEXT
    assert "[" + "#" * 30 + "] 100%  10,000 / 10,000 users moved, 0 remaining" in frames[1]
    assert "rate 0/s, ETA -" in frames[1]
    assert frames[-1] == STABLE_TEXT
    # JSON: one answer a line, until stable.
    state.gets = 0
    code, out, _ = run(capsys, [*argv, "-o", "json"])
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [x["ring"]["state"] for x in lines] == ["migrating"] * 2 + ["stable"]


def test_watch_is_bounded(
    stand_in: tuple[str, StandIn],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, state = stand_in
    monkeypatch.setattr(ring_cli, "WATCH_INTERVAL_S", 0.01)
    monkeypatch.setattr(ring_cli, "WATCH_MAX_S", 0.2)
    state.answers = [MIGRATING]  # never settles
    argv = ["presence", "ring", "status", "--watch", "--server", url, "--token", TOKEN]
    code, out, _ = run(capsys, argv)
    assert code == 0 and 2 <= state.gets < 100
    assert out.count("ring version 2: migrating") == state.gets


ERRORS = [
    (["add", "redis://127.0.0.1:1/0"], 503,
     "the new shard does not answer: redis://127.0.0.1:1/0: refused"),
    (["remove", "s9"], 404, "no shard 's9' on the ring"),
    (["reweight", "s1", "0"], 400, "weight: a whole number from 1 to 100, not 0"),
    (["reweight", "s1", "-2"], 400, "weight: a whole number from 1 to 100, not -2"),
    (["remove", "s0"], 409, "ring version 2 is still migrating"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "status", "message"), ERRORS, ids=[e[2][:20] for e in ERRORS])
def test_refusals_are_one_line(
    stand_in: tuple[str, StandIn],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    url, _ = stand_in
    code, out, err = run(capsys, ["presence", "ring", *argv, "--server", url, "--token", TOKEN])
    path = "/v1/ring/shards" + ("" if argv[0] == "add" else f"/{argv[1]}")
    assert (code, out, err) == (1, "", f"imctl: {url}{path}: HTTP {status}: {message}\n")


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["reweight", "s1", "heavy"], ["throttle", "fast"], ["add"], ["move"]):
        code, out, err = run(capsys, ["presence", "ring", *argv])
        assert (code, out) == (2, ""), argv
        assert err.startswith("usage: imctl presence ring"), err


def test_bar_and_duration() -> None:
    assert bar(0, 0, 10) == "[..........]   0%"
    assert bar(5, 10, 10) == "[#####.....]  50%"
    assert bar(15, 10, 10) == "[##########] 100%"
    assert [duration(s) for s in (None, 0.4, 59, 61, 3600, 7 * 3600 + 61)] == [
        "-", "0s", "59s", "1m01s", "1h00m", "7h01m"
    ]  # fmt: skip
