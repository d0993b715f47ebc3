"""A real access-node process under connection floods (issue 12, items 3-4): slow headers,
connections that never ask for anything, one address's handshake flood, descriptors
exhausted. Other clients (other loopback addresses: all of 127.0.0.0/8 is loopback) get
in, established sessions keep their heartbeats, /healthz answers, and the log stays small.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from control.common.tickets import TicketKeys
from control.testing import free_port, spawn_imctl, stop_process, until, wait_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SECRET = "flood-ticket-secret-0123456789"
KEYS = TicketKeys({"k": SECRET.encode()}, "k")
LOG_LIMIT = 16_000  # bytes of log a whole flood may leave


class Node:
    """``imctl access`` in a process of its own, its log in a file."""

    def __init__(
        self,
        tmp: Path,
        connections: dict[str, Any],
        access: dict[str, Any] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.port = free_port()
        config = {
            "regions": {"known": ["r"]},
            # 20 s without a ping before a session counts as gone: this test's own client
            # loop runs 7,000 flood sockets beside the held sessions (pinging every 1 s),
            # and on a busy 2-core machine it missed 3 s, 6 s and 10 s windows by itself.
            "heartbeat": {"interval_s": 2, "misses": 10},
            "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
            "access": {
                "nodes": [{"id": "n0", "region": "r", "port": self.port, "capacity": 5000}],
                **(access or {}),
            },
            "connections": {"log_interval_s": 60, **connections},
        }
        path = tmp / "node.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = tmp / "node.log"

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = spawn_imctl(
            ["access", "--config", str(path), "--node-id", "n0"], log=self.log, preexec_fn=limit
        )
        wait_port(self.port, 30)

    def url(self, uid: str, device: str = "d") -> str:
        ticket = KEYS.sign(uid, device, "n0", int(time.time()) + 600)
        return f"ws://127.0.0.1:{self.port}/ws?ticket={ticket}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 15)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(**kwargs: Any) -> Node:
        node = Node(tmp_path, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def http_from(ip: str) -> aiohttp.ClientSession:
    """A client on its own loopback address: another client, as far as the node sees."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0), limit=0))


async def healthz(port: int) -> int:
    async with (
        http_from("127.0.0.1") as http,
        http.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        return r.status


class Sessions:
    """Established WebSockets that ping every interval; each counts its pongs."""

    def __init__(self, node: Node, count: int) -> None:
        self.node = node
        self.count = count
        self.pongs = [0] * count
        self.closed: list[object] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._http = http_from("127.0.0.1")

    async def __aenter__(self) -> Sessions:
        for i in range(self.count):
            ws = await self._http.ws_connect(self.node.url(f"held{i}"))
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            self._tasks.append(asyncio.create_task(self._ping(i, ws)))
        return self

    async def _ping(self, i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await ws.send_json({"t": "ping"})
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.closed.append((msg.type, ws.close_code, msg.extra))
                return
            if json.loads(msg.data)["t"] == "pong":
                self.pongs[i] += 1
            await asyncio.sleep(1.0)

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.close()


async def hold_open(
    port: int, ip: str, first: bytes, trickle: bytes = b"", within: float = 20.0
) -> tuple[bytes, float]:
    """Connect from ``ip``, send ``first``, then a byte of ``trickle`` a second (a slow
    header) until the node closes; returns what it answered and after how long."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    try:
        if first:
            writer.write(first)
        answer = b""
        for byte in [trickle[i : i + 1] for i in range(len(trickle))] + [b""] * 60:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                if time.monotonic() - started > within:
                    return answer + b"<still open>", time.monotonic() - started
                if byte:
                    writer.write(byte)
                continue
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - started
    except ConnectionError:
        return b"<reset>", time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.timeout(90)
async def test_slowloris_and_silent_connections_are_capped_and_closed(
    node_factory: Callable[..., Node],
) -> None:
    """2,000 slow-header sockets from 4 addresses and 5,000 silent ones from 10 more: each
    address gets 150 of them, the rest a JSON 503 at once; the node closes the ones it
    took after its idle timeout; meanwhile 50 other clients connect, 10 established
    sessions keep their heartbeats, /healthz says 200, and the log stays small."""
    # Long enough for all 7,000 to arrive before the first are closed (on a busy machine
    # the arrivals took 4.6 s): a slot freed by the idle close would let one more in.
    idle = 4.0
    node = node_factory(
        connections={"idle_timeout_s": idle, "max_pending": 4096, "max_pending_per_address": 150}
    )
    slow_head = b"GET /ws HTTP/1.1\r\nHost: n0\r\nX-Slow: "
    async with Sessions(node, 10) as held:
        floods = [
            asyncio.create_task(hold_open(node.port, f"127.0.0.{2 + i % 4}", slow_head, b"a" * 30))
            for i in range(2000)
        ] + [
            asyncio.create_task(hold_open(node.port, f"127.0.0.{10 + i % 10}", b""))
            for i in range(5000)
        ]
        await asyncio.sleep(0.5)  # the flood is on
        assert await healthz(node.port) == 200

        async def legit(i: int) -> str:
            async with http_from(f"127.0.1.{i}") as http:
                ws = await http.ws_connect(node.url(f"late{i}"))
                welcome = await ws.receive_json(timeout=10)
                await ws.close()
                return str(welcome["t"])

        assert await asyncio.gather(*(legit(i) for i in range(1, 51))) == ["welcome"] * 50
        assert await healthz(node.port) == 200
        results = await asyncio.gather(*floods)
        pongs_before = list(held.pongs)
        await asyncio.sleep(2.5)
        assert held.closed == [], held.closed
        assert all(after > before for after, before in zip(held.pongs, pongs_before, strict=True))

    refused = [a for a, _ in results if a.startswith(b"HTTP/1.1 503")]
    taken = [(a, t) for a, t in results if not a.startswith(b"HTTP/1.1 503")]
    # Each address got its 150; past that, only slots the idle close freed (if arrivals
    # outlasted the idle timeout), at most one turn of them.
    assert 14 * 150 <= len(taken) <= 2 * 14 * 150, len(taken)
    assert len(refused) == 7000 - len(taken)
    body = json.loads(refused[0].split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "too_many_connections"
    # Closed by the node without an answer, about idle_timeout_s after they opened
    # (slow headers or none at all); none is still open.
    # (A reset is a close too: the node closed with the slow header's last bytes unread.)
    assert all(a in (b"", b"<reset>") for a, _ in taken), {a for a, _ in taken}
    # The bound is the test's own loop's lag too (7,000 sockets; 13 s seen on a loaded
    # machine): what it rules out is a socket the deadline never closed (held 90 s).
    assert max(t for _, t in taken) < idle * 4, max(t for _, t in taken)
    log = node.text()
    assert "Traceback" not in log and len(log.encode()) < LOG_LIMIT, log[-3000:]


@pytest.mark.timeout(90)
async def test_one_address_handshake_flood_leaves_the_others_their_turn(
    node_factory: Callable[..., Node],
) -> None:
    """One address sends upgrade after upgrade (valid tickets, pipelined 50 to a
    connection, 20 connections at a time) while 50 other clients connect: its own bucket
    stops it before the node-wide one, so every other client gets in."""
    node = node_factory(
        connections={"idle_timeout_s": 2},
        access={
            "handshake_rate_per_s": 40,
            "handshake_burst": 60,
            "handshake_rate_per_address_per_s": 5,
            "handshake_burst_per_address": 10,
        },
    )
    ticket = KEYS.sign("mallory", "d", "n0", int(time.time()) + 600)
    upgrade = (
        f"GET /ws?ticket={ticket} HTTP/1.1\r\nHost: n0\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()
    answers: list[bytes] = []
    stop = asyncio.Event()

    async def flooder() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", node.port, local_addr=("127.0.0.66", 0)
                )
            except OSError:
                continue
            try:
                writer.write(upgrade * 50)
                data = await asyncio.wait_for(reader.read(4096), 5)
                answers.append(data[:12])
            except (ConnectionError, TimeoutError):
                pass
            finally:
                writer.close()

    async with Sessions(node, 5) as held:
        flood = [asyncio.create_task(flooder()) for _ in range(20)]
        await until(lambda: len(answers) >= 200, 30, "the flood never got going")
        assert await healthz(node.port) == 200

        async def legit(i: int) -> str:
            async with http_from(f"127.0.2.{i}") as http:
                ws = await http.ws_connect(node.url(f"other{i}"))
                welcome = await ws.receive_json(timeout=10)
                await ws.close()
                return str(welcome["t"])

        assert await asyncio.gather(*(legit(i) for i in range(1, 51))) == ["welcome"] * 50
        assert await healthz(node.port) == 200
        stop.set()
        await asyncio.gather(*flood)
        assert held.closed == [] and min(held.pongs) >= 1
    refused = sum(1 for a in answers if a.startswith(b"HTTP/1.1 429"))
    assert refused >= len(answers) - 40, (refused, len(answers))
    metrics = await metrics_text(node.port)
    assert 'result="address_rate_limited"' in metrics
    log = node.text()
    assert "Traceback" not in log and len(log.encode()) < LOG_LIMIT, log[-3000:]


async def metrics_text(port: int) -> str:
    async with http_from("127.0.0.1") as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


@pytest.mark.timeout(90)
async def test_descriptor_exhaustion_is_logged_once_and_the_node_recovers(
    node_factory: Callable[..., Node],
) -> None:
    """Under a descriptor limit of 256, 400 silent connections exhaust it: accept() fails
    over and over, which the log says once (not a traceback per failure); the node's
    idle timeout frees the descriptors, after which /healthz answers again, and an
    established session keeps its heartbeat throughout."""
    node = node_factory(connections={"idle_timeout_s": 2}, nofile=256)
    async with Sessions(node, 3) as held:
        silent = [
            asyncio.create_task(hold_open(node.port, f"127.0.0.{2 + i % 4}", b""))
            for i in range(400)
        ]
        await until(lambda: "accept()" in node.text(), 20, "accept never failed")
        results = await asyncio.gather(*silent)
        assert all(not a.endswith(b"<still open>") for a, _ in results)
        deadline = time.monotonic() + 15
        while True:
            try:
                if await healthz(node.port) == 200:
                    break
            except (aiohttp.ClientError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "never answered /healthz again"
            await asyncio.sleep(0.2)
        pongs = list(held.pongs)
        await asyncio.sleep(2.5)
        assert held.closed == [] and all(a > b for a, b in zip(held.pongs, pongs, strict=True))
    log = node.text()
    assert log.count("accept()") <= 2, log[-3000:]
    assert "Traceback" not in log and len(log.encode()) < LOG_LIMIT, log[-3000:]
    assert "imctl_accept_errors_total" in await metrics_text(node.port)
