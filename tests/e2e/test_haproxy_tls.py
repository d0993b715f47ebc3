"""TLS through the real HAProxy, both modes: ``passthrough`` (the nodes hold the certificate;
HAProxy routes the ClientHello by SNI and relays it after a PROXY v2 header, the node starts
TLS after the header) and ``terminate`` (HAProxy holds the certificate, the nodes stay
plain). Each time a ``wss://`` client trusting the test's CA gets an endpoint from the
scheduler, connects through HAProxy by the node's SNI name, pings, gets a push, and the
node sees the client's own address."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control.common.tls import TLS_READ_BUFFER, client_context
from control.edge.haproxy import MasterSocket
from control.edge.watch import EdgeWatch
from control.launch.edge import edge_config
from control.testing import HaproxyServer, free_port, port_open, until
from tests.certs import Authority, make_ca
from tests.cluster import LocalCluster, cluster_settings
from tests.tokens import as_user

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

DOMAIN = "edge.imctl.test"  # .test: reserved, never a real name (RFC 2606)


class Files(NamedTuple):
    ca: Path
    cert: Path
    key: Path
    bundle: Path  # certificate and key in one file, as HAProxy's `crt` takes them


def issue_for(ca: Authority, directory: Path) -> Files:
    """One certificate for every node's SNI name (a wildcard) and for 127.0.0.1 (the
    nodes' internal URLs, which pushes go through with TLS on)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName(f"*.{DOMAIN}"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{DOMAIN}")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cert_pem = cert.public_bytes(pem)
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = Files(ca.path, directory / "edge.pem", directory / "edge.key", directory / "lb.pem")
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.bundle.write_bytes(cert_pem + key_pem)
    return files


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    directory = tmp_path_factory.mktemp("edge-tls")
    yield issue_for(make_ca(directory), directory)


class Names(AbstractResolver):
    """The nodes' SNI names are the balancer's address (here 127.0.0.1), as DNS would
    say in a deployment; anything else is not resolved."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != "127.0.0.1" and not host.endswith("." + DOMAIN):
            raise OSError(f"{host}: not a test name")
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
        ]  # fmt: skip

    async def close(self) -> None:
        pass


def settings_for(haproxy: HaproxyServer, files: Files, mode: str, nodes_tls: bool) -> Any:
    tls_port = free_port()
    nodes = [
        {
            "id": f"n{i}",
            "region": region,
            "zone": "a",
            "port": free_port(),
            "proxy_port": free_port(),
            "endpoint": f"wss://n{i}.{DOMAIN}:{tls_port}/ws",
            "capacity": 5000,
        }
        for i, region in enumerate(["north", "south"])
    ]
    access: dict[str, Any] = {
        "nodes": nodes,
        "internal_token": "test-internal-token-123",
        "report_interval_s": 0.2,
        "balancers": ["127.0.0.1/32"],
    }
    if nodes_tls:
        access["tls"] = {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}
    edge = {
        "config_path": str(haproxy.config),
        "master_socket": str(haproxy.socket),
        "tls": mode,
        "tls_port": tls_port,
        "reload_interval_s": 0.2,
    }
    if mode == "terminate":
        edge["certificate"] = str(files.bundle)
    return cluster_settings(access=access, edge=edge)


@pytest.mark.parametrize(
    ("mode", "nodes_tls"),
    [
        ("passthrough", True),
        ("terminate", False),
        # The nodes' own listeners (internal API, /metrics) on HTTPS: what HAProxy relays
        # after its header is still plain.
        ("terminate", True),
    ],
)
async def test_wss_through_haproxy(
    haproxy_server: HaproxyServer, certs: Files, mode: str, nodes_tls: bool
) -> None:
    settings = settings_for(haproxy_server, certs, mode, nodes_tls)
    async with LocalCluster(settings, scheduler=True) as c:
        watch = EdgeWatch(edge_config(settings), c.kv, MasterSocket(str(haproxy_server.socket)))
        watch.start()
        connector = aiohttp.TCPConnector(
            local_addr=("127.0.0.2", 0), ssl=client_context(str(certs.ca)), resolver=Names()
        )
        alice = aiohttp.ClientSession(connector=connector)
        try:
            await through_the_balancer(c, watch, alice, settings.edge.tls_port, mode)
        finally:
            await watch.close()
            await alice.close()


async def through_the_balancer(
    c: LocalCluster, watch: EdgeWatch, alice: aiohttp.ClientSession, tls_port: int, mode: str
) -> None:
    await until(lambda: port_open(tls_port), 10, "HAProxy's TLS port")
    await until(lambda: watch.last is not None and len(watch.last.routes) == 2, 10, "2 routes")
    assert watch.last is not None and f"n0 (sni n0.{DOMAIN})" in watch.last.summary()
    text = watch.path.read_text()
    assert ("ssl crt" in text) == (mode == "terminate"), text
    url = f"http://127.0.0.1:{c.settings.scheduler.port}/v1/endpoint"
    query = "?uid=alice&device=phone&platform=ios&version=1.0&region=north"

    async def answer() -> dict[str, Any] | None:
        async with alice.get(url + query, headers=as_user("alice")) as resp:
            return await resp.json() if resp.status == 200 else None

    await until(answer, 10, "an endpoint from the scheduler")
    got = await answer()
    assert got is not None and got["node"] == "n0", got
    assert got["endpoint"] == f"wss://n0.{DOMAIN}:{tls_port}/ws", got
    ws = await alice.ws_connect(f"{got['endpoint']}?ticket={got['ticket']}")
    try:
        assert (await ws.receive_json(timeout=5))["t"] == "welcome"
        (session,) = c.node("n0").sessions.values()
        # The client's own address through PROXY v2, not HAProxy's (127.0.0.1).
        assert session.transport.get_extra_info("peername")[0] == "127.0.0.2"
        # Who holds the TLS session: the node (passthrough) or HAProxy (terminate).
        node_tls = session.transport.get_extra_info("sslcontext") is not None
        assert node_tls == (mode == "passthrough")
        if node_tls:
            # The node reads TLS in 16 KiB at a time, not asyncio's 256 KiB (zero-filled
            # per connection: the bulk of an idle wss connection's memory).
            ssl_protocol = session.transport._real._ssl_protocol  # type: ignore[attr-defined]
            assert len(ssl_protocol._ssl_buffer) <= TLS_READ_BUFFER
        await ws.send_json({"t": "ping"})
        assert (await ws.receive_json(timeout=5))["t"] == "pong"
        # A frame near the size limit crosses several TLS records and reads.
        body = "x" * 60_000
        await ws.send_json({"t": "echo", "body": body})
        assert (await ws.receive_json(timeout=5)) == {"t": "echo", "body": body}
        result = await c.node("n1").pusher.push(["alice"], {"t": "news", "n": 1})
        assert result.delivered == 1, result
        assert (await ws.receive_json(timeout=5)) == {"t": "news", "n": 1}
        # n1 is reached by its own name on the same port.
        ticket = c.ticket("alice", "tablet", "n1")
        ws1 = await alice.ws_connect(f"wss://n1.{DOMAIN}:{tls_port}/ws?ticket={ticket}")
        assert (await ws1.receive_json(timeout=5))["node"] == "n1"
        await ws1.close()
        # A client that does not trust the certificate, and one naming no routed node:
        # refused at the handshake (by the node's TLS, or by HAProxy), nothing else touched.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=Names())) as eve:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await eve.get(f"https://n0.{DOMAIN}:{tls_port}/healthz")
            with pytest.raises(aiohttp.ClientConnectionError):
                await alice.get(f"https://nx.{DOMAIN}:{tls_port}/healthz")
        await ws.send_json({"t": "ping"})
        assert (await ws.receive_json(timeout=5))["t"] == "pong"
    finally:
        await ws.close()
