"""Bytes no well-behaved client sends — not UTF-8 in headers, query strings, paths and
bodies — to every endpoint of every process: each gets a 4xx answer, never a 500."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.cluster import LocalCluster, cluster_settings

TOKEN = "viewer-token-0123456789"
JUNK = b"\xff\xfe\xc3("  # invalid UTF-8

SCHEDULER = [
    (b"GET", b"/v1/endpoint?uid=" + JUNK + b"&device=d&platform=ios&version=1.0"),
    (b"GET", b"/v1/endpoint?uid=%ff%fe&device=d&platform=ios&version=1.0"),
    (b"GET", b"/v1/endpoint?uid=a&device=" + JUNK + b"&platform=ios&version=" + JUNK),
    (b"GET", b"/v1/nodes"),
    (b"GET", b"/v1/explain?uid=a&device=d&platform=ios&version=1.0&ip=" + JUNK),
    (b"POST", b"/v1/nodes/" + JUNK + b"/drain"),
    (b"DELETE", b"/v1/nodes/%ff/drain"),
    (b"GET", b"/v1/presence/count?by=" + JUNK),
    (b"POST", b"/v1/presence/lookup"),
    (b"GET", b"/v1/presence/events?uid=" + JUNK),
    (b"GET", b"/v1/presence/events?count=%ff" + JUNK),
    (b"GET", b"/v1/presence/" + JUNK),
    (b"GET", b"/" + JUNK),
]
NODE = [
    (b"GET", b"/ws?ticket=" + JUNK),
    (b"GET", b"/ws?ticket=v1." + JUNK + b"." + JUNK),
    (b"POST", b"/internal/push"),
    (b"POST", b"/internal/kick"),
    (b"GET", b"/" + JUNK),
]
OPS = [(b"GET", b"/healthz"), (b"GET", b"/readyz?" + JUNK), (b"GET", b"/metrics")]
HEADERS = [
    b"Authorization: Bearer " + JUNK,
    b"Authorization: " + JUNK,
    b"Authorization: Bearer " + TOKEN.encode(),
    b"X-Forwarded-For: " + JUNK + b", 127.0.0.1",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: " + JUNK,
]


async def status_of(port: int, method: bytes, target: bytes, header: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b'{"uids": ["' + JUNK + b'"], "payload": {"x": "' + JUNK + b'"}}'
        writer.write(
            method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    assert found, line
    return int(found.group(1))


@pytest.mark.timeout(60)
async def test_no_endpoint_answers_500_to_bytes_that_are_not_utf8() -> None:
    settings = cluster_settings(
        nodes=1, admin={"tokens": [{"name": "v", "token": TOKEN, "role": "viewer"}]}
    )
    async with LocalCluster(settings, scheduler=True, controller=True):
        targets = [
            (settings.scheduler.port, SCHEDULER + OPS),
            (settings.access.node("n0").port, NODE + OPS),
            (settings.controller.port, OPS),
        ]
        answered: dict[int, int] = {}
        for port, requests in targets:
            for method, target in requests:
                for header in HEADERS:
                    status = await status_of(port, method, target, header)
                    assert status < 500, (port, method, target, header, status)
                    answered[status] = answered.get(status, 0) + 1
        # The junk reached the handlers (not only the parser's 400): they refused it.
        assert {400, 401, 403} <= set(answered), answered


async def answer_of(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.timeout(60)
async def test_every_process_answers_unknown_paths_and_methods_in_json() -> None:
    """Operators and the push API read the JSON error of any process; aiohttp's own 404
    and 405 are plain text."""
    settings = cluster_settings(nodes=1)
    async with LocalCluster(settings, scheduler=True, controller=True):
        wrong_method = {
            settings.scheduler.port: ("POST", "/v1/endpoint", "GET,OPTIONS"),  # + CORS
            settings.access.node("n0").port: ("DELETE", "/internal/push", "POST"),
            settings.controller.port: ("POST", "/metrics", "GET,HEAD"),
        }
        for port, (method, path, allow) in wrong_method.items():
            status, headers, body = await answer_of(port, "GET", "/no/such/path")
            assert status == 404, (port, body)
            assert json.loads(body)["error"] == "not_found", (port, body)
            status, headers, body = await answer_of(port, method, path)
            assert status == 405, (port, body)
            assert json.loads(body)["error"] == "method_not_allowed", (port, body)
            assert headers["allow"] == allow, (port, headers)
        # HEAD of an upgrade path would spend a handshake token for nothing.
        status, headers, body = await answer_of(settings.access.node("n0").port, "HEAD", "/ws")
        assert status == 405 and headers["allow"] == "GET", (status, headers)
