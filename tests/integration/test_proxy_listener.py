"""An access node's PROXY v2 listener, driven in process: a stand-in balancer relays
clients with a header naming them, and the node sees each client's own address; anything
else that reaches the listener is refused, counted, and touches nothing else. (The real
HAProxy in front of real nodes: tests/e2e/test_haproxy.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.common.proxyproto import SIGNATURE, build
from control.testing import Pinger, free_port, until
from tests.cluster import LocalCluster, cluster_settings

HEADER_DEADLINE_S = 0.6


class Relay:
    """A balancer in miniature: each connection to ``port`` is piped to ``target`` from
    127.0.0.1, after a PROXY v2 header naming the client's own address."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.pipes:
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.target, local_addr=("127.0.0.1", 0)
        )
        up_writer.write(build((client[0], client[1]), ("127.0.0.1", self.port)))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(src, dst))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        dst.close()


def proxied_settings(tls: tuple[Path, Path] | None = None) -> Any:
    node = {"id": "n0", "region": "north", "zone": "a", "port": free_port()}
    node["proxy_port"] = free_port()
    access: dict[str, Any] = {
        "nodes": [node],
        "internal_token": "test-internal-token-123",
        "report_interval_s": 0.2,
        "balancers": ["127.0.0.1/32"],
    }
    if tls is not None:
        access["tls"] = {"cert": str(tls[0]), "key": str(tls[1]), "ca": str(tls[0])}
    return cluster_settings(
        nodes=1,
        access=access,
        connections={"idle_timeout_s": HEADER_DEADLINE_S},
    )


@pytest.fixture
async def cluster() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(proxied_settings()) as c:
        yield c


async def raw_exchange(
    port: int, data: bytes, source: str = "127.0.0.1", eof: bool = False
) -> bytes:
    """Send ``data`` from ``source`` and read until the node closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(data)
    if eof:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_node_sees_the_clients_address_and_refuses_everything_else(
    cluster: LocalCluster,
) -> None:
    c = cluster
    port = c.settings.access.node("n0").proxy_port
    async with (
        Relay(port) as relay,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as http,
    ):
        url = f"ws://127.0.0.1:{relay.port}/ws?ticket=" + c.ticket("alice", "phone", "n0")
        ws = await http.ws_connect(url)
        assert (await ws.receive_json(timeout=5))["t"] == "welcome"
        (session,) = c.node("n0").sessions.values()
        # The client's address, not the relay's (127.0.0.1).
        assert session.transport.get_extra_info("peername")[0] == "127.0.0.2"
        pinger = Pinger(ws, every=0.2, strict=True)
        try:
            await refusals(c, port, pinger)
        finally:
            await pinger.close()


async def refusals(c: LocalCluster, port: int, pinger: Pinger) -> None:
    """A header from a peer that is not a balancer, a missing one, a malformed one, a
    truncated one, one slower than the deadline: each closed and counted by reason."""
    guard = c.process.guard
    assert guard is not None
    header = build(("203.0.113.9", 1234), ("127.0.0.1", port))
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert await raw_exchange(port, header + get, source="127.0.0.3") == b""
    assert await raw_exchange(port, get) == b""
    assert await raw_exchange(port, SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12) + get) == b""
    assert await raw_exchange(port, header[:20], eof=True) == b""
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await raw_exchange(port, header[:5]) == b""
    assert HEADER_DEADLINE_S * 0.8 <= loop.time() - started < HEADER_DEADLINE_S + 3
    assert guard.proxy_refusals == {
        "not_balancer": 1,
        "missing": 1,
        "malformed": 1,
        "truncated": 1,
        "timeout": 1,
    }
    # A whole header from a balancer gets its answer; on the node's own port a PROXY
    # header is no HTTP request.
    answer = await raw_exchange(port, header + get.replace(b"1.1", b"1.0"))
    assert answer.startswith(b"HTTP/1.0 200"), answer[:80]
    answer = await raw_exchange(c.settings.access.node("n0").port, header + get)
    assert answer.startswith(b"HTTP/1.0 400") and b"not an HTTP request" in answer
    # Nothing else was affected: the relayed client kept its pongs coming.
    pongs = pinger.pongs
    await until(lambda: pinger.pongs >= pongs + 2, what="pongs after the refusals")
    assert pinger.alive and not pinger.other
    metrics = await raw_exchange(
        c.settings.access.node("n0").port, b"GET /metrics HTTP/1.0\r\n\r\n"
    )
    assert b'imctl_proxy_refused_total{reason="timeout"} 1.0' in metrics


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_starts_after_the_header(certificate: tuple[Path, Path]) -> None:
    """TLS passed through by the balancer: the header, then TLS on the same transport with
    the node's own context (access.tls; a certificate made here)."""
    cert, _ = certificate
    client_ssl = ssl.create_default_context(cafile=str(cert))
    async with LocalCluster(proxied_settings(tls=certificate)) as c:
        port = c.settings.access.node("n0").proxy_port
        async with (
            Relay(port) as relay,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), ssl=client_ssl)
            ) as http,
        ):
            url = f"wss://127.0.0.1:{relay.port}/ws?ticket=" + c.ticket("tess", "phone", "n0")
            ws = await http.ws_connect(url)
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            (session,) = c.node("n0").sessions.values()
            assert session.transport.get_extra_info("peername")[0] == "127.0.0.2"
            assert session.transport.get_extra_info("sslcontext") is not None
            await ws.send_json({"t": "ping"})
            assert (await ws.receive_json(timeout=5))["t"] == "pong"
            await ws.close()
