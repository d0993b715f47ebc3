"""The frame schema (control/api/frames.py) and the node agree: a sample of client frames
is refused by the schema exactly when a real node (with the reference core) refuses it,
and the frames the node builds validate while broken ones do not."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from control.access import protocol
from control.api.frames import ERROR_CODES, RECONNECT_REASONS
from tests.cluster import LocalCluster, cluster_settings
from tests.frames import frame_problems, text_problems

# (frame, does the node take it?) with the reference core (control/access/echo.py).
CLIENT_SAMPLE: list[tuple[Any, bool]] = [
    ({"t": "ping"}, True),
    ({"t": "ping", "extra": [1, 2]}, True),
    ({"t": "status", "status": "busy"}, True),
    ({"t": "status", "status": "invisible"}, True),
    ({"t": "echo", "body": "hi"}, True),
    ({"t": "echo"}, True),
    ({"t": "echo", "body": {"nested": [1, None, "x"]}}, True),
    ({"t": "msg", "to": "bob", "body": "hello", "id": 1}, True),
    ({"t": "msg", "to": "bob", "body": {"card": 1}}, True),
    ({"t": "teleport"}, False),
    ({"t": ""}, False),
    ({"t": 5}, False),
    ({"type": "ping"}, False),
    ([1, 2], False),
    ("ping", False),
    ({"t": "status", "status": "asleep"}, False),
    ({"t": "status"}, False),
    ({"t": "msg", "body": "x"}, False),
    ({"t": "msg", "to": "", "body": "x"}, False),
    ({"t": "msg", "to": 7, "body": "x"}, False),
    ({"t": "msg", "to": "bob", "body": "x" * 16_385}, False),
]


async def test_the_schema_refuses_what_the_node_refuses_and_takes_what_it_takes() -> None:
    settings = cluster_settings(nodes=1, access={"abuse_limit": 1000})
    # A plain session: the checked one (tests/frames.py) would count these itself.
    async with LocalCluster(settings) as c, aiohttp.ClientSession() as http:
        ws, _ = await c.connect(http, "alice", "n0")
        disagree = []
        for frame, taken in CLIENT_SAMPLE:
            await ws.send_str(json.dumps(frame))
            answer = await ws.receive_json(timeout=5)
            node_takes = answer["t"] != "error"
            schema_takes = not frame_problems("client", frame)
            assert node_takes == taken, (frame, answer)
            if schema_takes != node_takes:
                disagree.append((frame, answer))
        await ws.close()
    assert disagree == []


@pytest.mark.parametrize(
    "text",
    [
        '{"t": "echo", "body": "\\ud800"}',  # half a surrogate pair: refused by the node
        '{"t": "echo", "v": NaN}',  # not JSON
        "[" * 5000 + "]" * 5000,
        "{not json",
    ],
)
def test_text_the_node_cannot_read_is_refused_too(text: str) -> None:
    assert text_problems("client", text)
    assert isinstance(protocol.parse_frame(text, 65_536), protocol.FrameError)


def test_the_frames_the_node_builds_validate() -> None:
    built: list[dict[str, Any]] = [
        protocol.welcome("n0.ab.1", "n0", 30.0, 90.0),
        protocol.kicked("logged in elsewhere"),
        {"t": "pong"},
        {"t": "status", "status": "away", "ok": True},
        *(protocol.reconnect(1500, reason) for reason in RECONNECT_REASONS),
        *(protocol.FrameError(code, "why").frame() for code in ERROR_CODES),
        {"t": "news", "n": 1},  # a push's payload: free-form
        {"anything": "goes"},
    ]
    for frame in built:
        assert frame_problems("server", frame) == [], frame


@pytest.mark.parametrize(
    "frame,says",
    [
        ({"t": "reconnect", "after_ms": 10, "reason": "nap"}, "reason"),
        ({"t": "reconnect", "after_ms": -1, "reason": "drain"}, "after_ms"),
        ({"t": "welcome", "conn": "c", "node": "n"}, "heartbeat"),
        ({"t": "error", "code": "oops", "message": "m"}, "code"),
        ({"t": "pong", "late": True}, "late"),
        ({"t": "kicked"}, "reason"),
    ],
)
def test_a_broken_server_frame_is_refused_naming_the_field(
    frame: dict[str, Any], says: str
) -> None:
    problems = frame_problems("server", frame)
    assert problems and says in " ".join(problems), problems
