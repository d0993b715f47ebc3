"""The gray analysis reads nodes that serve HTTPS under a private CA: the controller's
figures source (control/launch/gray.py's ``figures_source``) trusts ``access.tls.ca``,
so the canary and stable pools' figures come from the nodes' own ``/metrics`` over TLS."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from control.common.tls import client_context
from control.gray.figures import NodeMetricsSource
from control.gray.model import Target
from control.launch.gray import figures_source
from control.testing import free_port
from tests.certs import install, issue, make_ca
from tests.cluster import LocalCluster, cluster_settings


@pytest.mark.timeout(60)
async def test_figures_from_nodes_serving_https_under_a_private_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    cert, key = issue(ca)
    install(tmp_path / "cert.pem", cert)
    install(tmp_path / "key.pem", key)
    tls = {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem"), "ca": str(ca.path)}
    nodes = [
        {"id": "s0", "region": "north", "zone": "a", "port": free_port(), "pool": "default"},
        {"id": "c0", "region": "north", "zone": "a", "port": free_port(), "pool": "canary"},
    ]
    settings = cluster_settings(access={"nodes": nodes, "tls": tls})
    async with LocalCluster(settings) as c:
        source = figures_source(settings, c.kv)
        assert isinstance(source, NodeMetricsSource)
        await source.sample()
        assert source.unreadable == {}, source.unreadable
        connector = aiohttp.TCPConnector(ssl=client_context(str(ca.path)))
        async with aiohttp.ClientSession(connector=connector) as http:
            url = c.ws_url("c0", c.ticket("u1", "d1", "c0")).replace("ws:", "wss:", 1)
            ws = await http.ws_connect(url)
            assert (await ws.receive_json(timeout=5))["t"] == "welcome"
            await source.sample()
            canary, stable = await source.read(Target(pool="canary"), 60)
            assert (canary.nodes, canary.connections, canary.handshakes) == (1, 1, 1)
            assert (stable.nodes, stable.connections) == (1, 0)
            await ws.close()
