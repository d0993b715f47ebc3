"""TLS end to end on real sockets: the scheduler answers over https:// with wss://
endpoints, clients trusting the test's CA connect, a renewed certificate is served
without a restart (the served serial changes, open connections stay), and plain HTTP to
the TLS port is refused without harm."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.common.tls import client_context
from control.testing import until
from tests.certs import Authority, install, issue, make_ca, serial_of
from tests.cluster import LocalCluster, cluster_settings
from tests.tokens import as_user, token


def tls_cluster(directory: Path, **sections: Any) -> tuple[LocalCluster, Authority]:
    ca = make_ca(directory)
    cert, key = issue(ca, 1001)
    install(directory / "cert.pem", cert)
    install(directory / "key.pem", key)
    tls = {
        "cert": str(directory / "cert.pem"),
        "key": str(directory / "key.pem"),
        "ca": str(ca.path),
        "reload_s": 0.1,
    }
    settings = cluster_settings(
        nodes=2,
        scheduler={"tls": tls},
        access={"tls": tls},
        connections={"idle_timeout_s": 1.0},
        **sections,
    )
    return LocalCluster(settings, scheduler=True), ca


async def served_serial(port: int, ca: Path) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(str(ca)))
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return serial_of(der)
    finally:
        writer.close()


async def ask(http: aiohttp.ClientSession, base: str, uid: str) -> dict[str, Any]:
    params = {"uid": uid, "device": "d1", "platform": "ios", "version": "1.0"}
    async with http.get(f"{base}/v1/endpoint", params=params, headers=as_user(uid)) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


@pytest.mark.timeout(60)
async def test_https_endpoint_wss_sessions_and_the_cli_with_the_tests_ca(tmp_path: Path) -> None:
    cluster, ca = tls_cluster(tmp_path)
    async with cluster as c:
        base = f"https://127.0.0.1:{c.settings.scheduler.port}"
        connector = aiohttp.TCPConnector(ssl=client_context(str(ca.path)))
        async with aiohttp.ClientSession(connector=connector) as http:
            answer = await ask(http, base, "alice")
            assert answer["endpoint"].startswith("wss://127.0.0.1:"), answer
            assert all(f["endpoint"].startswith("wss://") for f in answer["fallbacks"])
            ws = await http.ws_connect(f"{answer['endpoint']}?ticket={answer['ticket']}")
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            await ws.send_json({"t": "ping"})
            assert (await ws.receive_json(timeout=5))["t"] == "pong"
            # A message between users goes through the nodes' internal API, over https.
            bob_answer = await ask(http, base, "bob")
            bob = f"{bob_answer['endpoint']}?ticket={bob_answer['ticket']}"
            bob_ws = await http.ws_connect(bob)
            assert (await bob_ws.receive_json(timeout=5))["t"] == "welcome"
            await bob_ws.send_json({"t": "msg", "to": "alice", "body": "over tls", "id": 1})
            got = await ws.receive_json(timeout=5)
            assert got == {"t": "msg", "from": "bob", "body": "over tls"}, got
            assert (await bob_ws.receive_json(timeout=5))["delivered"] == 1
            await bob_ws.close()
            await ws.close()
        # Without the CA: the certificate is not trusted, the connection refused.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await plain.get(f"{base}/healthz")
        # The CLI's admin verbs and the reference client take --cacert.
        nodes = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "nodes", "--server", base,
            "--cacert", str(ca.path), "-o", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(nodes.communicate(), 20)
        assert nodes.returncode == 0, err.decode()
        assert '"n0"' in out.decode() and '"n1"' in out.decode()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "connect", "--uid", "carol", "--server", base,
            "--token", token("carol"), "--cacert", str(ca.path), "-o", "json",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert client.stdout is not None and client.stdin is not None
        line = await asyncio.wait_for(client.stdout.readline(), 20)
        assert b'"welcome"' in line, line
        client.stdin.close()
        await asyncio.wait_for(client.wait(), 20)
        assert client.returncode == 0


@pytest.mark.timeout(60)
async def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, ca = tls_cluster(tmp_path)
    async with cluster as c:
        sched = c.settings.scheduler.port
        node = c.settings.access.nodes[0].port
        assert await served_serial(sched, ca.path) == 1001
        assert await served_serial(node, ca.path) == 1001
        connector = aiohttp.TCPConnector(ssl=client_context(str(ca.path)))
        async with aiohttp.ClientSession(connector=connector) as http:
            url = c.ws_url("n0", c.ticket("dora", "d1", "n0")).replace("ws:", "wss:", 1)
            ws = await http.ws_connect(url)
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"

            cert, key = issue(ca, 2002)
            install(tmp_path / "key.pem", key)
            install(tmp_path / "cert.pem", cert)

            async def renewed() -> bool:
                served = await served_serial(sched, ca.path), await served_serial(node, ca.path)
                return served == (2002, 2002)

            await until(renewed, within=5, what="the renewed certificate served")
            # The connection made under the old certificate lives on.
            await ws.send_json({"t": "ping"})
            assert (await ws.receive_json(timeout=5))["t"] == "pong"

            # A broken renewal (a key that is not the certificate's): the old pair stays.
            bad_cert, _ = issue(ca, 3003)
            with caplog.at_level(logging.ERROR, "imctl.tls"):
                install(tmp_path / "cert.pem", bad_cert)
                await until(
                    lambda: any("does not belong" in r.getMessage() for r in caplog.records),
                    within=5,
                    what="the bad pair logged",
                )
            assert await served_serial(sched, ca.path) == 2002
            assert await served_serial(node, ca.path) == 2002
            async with http.get(f"https://127.0.0.1:{sched}/metrics") as resp:
                text = await resp.text()
            assert 'imctl_tls_reloads_total{result="error"} 1.0' in text, text
            assert 'imctl_tls_reloads_total{result="reloaded"} 1.0' in text
            await ws.close()


@pytest.mark.timeout(60)
async def test_plain_http_and_silence_on_the_tls_port_fail_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, ca = tls_cluster(tmp_path)
    async with cluster as c:
        port = c.settings.scheduler.port
        with caplog.at_level(logging.DEBUG):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            # Refused at the handshake: at most a TLS alert, then the close.
            data = await asyncio.wait_for(reader.read(), 5)
            assert not data.startswith(b"HTTP/"), data
            writer.close()
            # A peer that never starts a handshake is cut off at the idle deadline (1 s
            # here), not asyncio's 60 s.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert asyncio.get_running_loop().time() - started < 3
            writer.close()
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        # The server keeps serving.
        connector = aiohttp.TCPConnector(ssl=client_context(str(ca.path)))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"https://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
