"""Seeded random HTTP against a real ``imctl up`` (scheduler, access nodes and controller in
one process): requests well-formed and not — bad request lines, bad headers, odd methods,
paths and bodies, truncated framing. No answer is a 500, every 4xx is a JSON error
``{"error", "message"}`` that does not repeat the request, and the log holds no traceback
and stays small (malformed requests are logged once per interval per kind)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
from pathlib import Path

import pytest

from control.testing import local_config, spawn_imctl, stop_process, wait_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SEED = 20261203
COUNT = 3000
MARK = b"zq7FUZZ"  # in every request: an answer that contains it echoed the request

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"G\xffT", b"", b"GET GET"]
PATHS = [
    b"/v1/endpoint?uid=u&device=d&platform=ios&version=1.0",
    b"/v1/endpoint?uid=%ff&version=" + MARK,
    b"/v1/nodes",
    b"/v1/presence/count",
    b"/v1/presence/" + MARK,
    b"/ws?ticket=" + MARK,
    b"/ws",
    b"/internal/push",
    b"/healthz",
    b"/readyz",
    b"/" + MARK,
    b"*",
    b"http://x/" + MARK,
    b"/\x00" + MARK,
    b"/" + b"a" * 9000 + MARK,
]
HEADERS = [
    b"Host: x",
    b"Authorization: Bearer " + MARK,
    b"Content-Type: application/json",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: " + MARK,
    b"X-Forwarded-For: " + MARK,
    b"Bad Header " + MARK,
    b": " + MARK,
    b"X-Long: " + b"b" * 9000,
    b"Transfer-Encoding: chunked",
    b"Content-Length: -1",
    b"Content-Length: 5",
    b"Transfer-Encoding: gzip, chunked",
    b"X\x01Y: " + MARK,
]
BODIES = [b"", b'{"uids": ["a"], "payload": {}}', b"zz\r\n" + MARK, b"0\r\n\r\n", b"{" * 50, MARK]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"" + MARK]


def request(rng: random.Random) -> tuple[bytes, bytes]:
    """One request (the method too, to know whether an answer has a body)."""
    method = rng.choice(METHODS)
    version = rng.choice(VERSIONS) if rng.random() < 0.2 else b"HTTP/1.1"
    headers = rng.sample(HEADERS, rng.randint(0, 2))
    body = rng.choice(BODIES)
    lines = [method + b" " + rng.choice(PATHS) + b" " + version, *headers, b"Connection: close"]
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    if rng.random() < 0.1:  # random bytes flipped in
        data = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        raw = bytes(data)
    return method, raw


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        answer = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 3)
            except TimeoutError:
                break  # waits for a body it was promised: the answer is in, or nothing is
            if not chunk:
                break
            answer += chunk
        return answer
    except ConnectionError:
        return b""
    finally:
        writer.close()


def check(method: bytes, raw: bytes, answer: bytes) -> str | None:
    """What is wrong with this answer, or None."""
    if not answer:
        return None  # closed without an answer (a half request, say): not a 500
    found = re.match(rb"HTTP/\d\.\d (\d{3}) ", answer)
    if not found:
        return f"not an HTTP answer: {answer[:80]!r}"
    status = int(found.group(1))
    if status >= 500 and status != 503:
        return f"{status} for {raw[:120]!r}: {answer[:300]!r}"
    _head, _, body = answer.partition(b"\r\n\r\n")
    if 400 <= status < 500 and method != b"HEAD":
        try:
            error = json.loads(body)
        except ValueError:
            return f"{status} without a JSON body for {raw[:120]!r}: {answer[:300]!r}"
        if not isinstance(error, dict) or not {"error", "message"} <= error.keys():
            return f"{status} body is not a JSON error: {body[:200]!r}"
        # A 404 names the path it did not find (ours, cut at 100 characters); a 400 from
        # the parser must not repeat what it could not parse.
        if status == 400 and MARK in body:
            return f"{status} echoes the request: {body[:200]!r}"
    return None


def start_up(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return spawn_imctl(["up", "--config", str(config)], log=log)


@pytest.mark.timeout(180)
async def test_seeded_random_http_gets_no_500_and_json_4xx(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    config = local_config(path, connections={"idle_timeout_s": 2})
    log = tmp_path / "up.log"
    proc = start_up(path, log)
    try:
        ports = [
            config["scheduler"]["port"],
            config["access"]["nodes"][0]["port"],
            config["controller"]["port"],
        ]
        for port in ports:
            wait_port(port, 30)
        rng = random.Random(SEED)
        cases = [(rng.choice(ports), *request(rng)) for _ in range(COUNT)]
        gate = asyncio.Semaphore(32)

        async def one(port: int, method: bytes, raw: bytes) -> str | None:
            async with gate:
                return check(method, raw, await exchange(port, raw))

        problems = [p for p in await asyncio.gather(*(one(*c) for c in cases)) if p]
        assert problems == [], f"{len(problems)} bad answers, first: {problems[:5]}"
        assert proc.poll() is None, "imctl up died"
    finally:
        stop_process(proc, 15)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert len(text.encode()) < 20_000, text[-3000:]
