"""Access nodes behind a real HAProxy (Debian's, master-worker) that `imctl lb watch`'s
task keeps current: a client asks the scheduler, connects through HAProxy and stays
connected across three reloads (a node joins, one drains, one vanishes) while new clients
use the new configuration; each node sees its clients' own addresses through PROXY v2."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from control.common.errors import BackendUnavailable
from control.common.registry import NodeRecord
from control.edge.haproxy import MasterSocket
from control.edge.watch import EdgeWatch
from control.launch import Process, access_part
from control.launch.edge import edge_config
from control.testing import HaproxyServer, free_port, port_open, until
from tests.cluster import LocalCluster, cluster_settings
from tests.tokens import as_user

pytestmark = pytest.mark.e2e


def settings_for(haproxy: HaproxyServer, nodes: list[dict[str, Any]]) -> Any:
    return cluster_settings(
        access={
            "nodes": nodes,
            "internal_token": "test-internal-token-123",
            "report_interval_s": 0.2,
            "balancers": ["127.0.0.1/32"],
        },
        edge={
            "config_path": str(haproxy.config),
            "master_socket": str(haproxy.socket),
            "first_port": 1024,
            "last_port": 65535,
            "reload_interval_s": 0.3,
        },
    )


def client(source: str) -> aiohttp.ClientSession:
    """A client whose own address is ``source`` (any 127/8 address is loopback)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))


def public_port(record: NodeRecord | dict[str, Any]) -> int:
    endpoint = record["endpoint"] if isinstance(record, dict) else record.endpoint
    return int(endpoint.rsplit(":", 1)[1].split("/")[0])


async def test_clients_stay_connected_across_reloads(haproxy_server: HaproxyServer) -> None:
    nodes = []
    for i, region in enumerate(["north", "south", "north"]):
        lb = free_port()
        nodes.append(
            {
                "id": f"n{i}",
                "region": region,
                "zone": "a",
                "port": free_port(),
                "proxy_port": free_port(),
                "endpoint": f"ws://127.0.0.1:{lb}/ws",
                "capacity": 5000,
            }
        )
    full = settings_for(haproxy_server, nodes)
    async with LocalCluster(settings_for(haproxy_server, nodes[:2]), scheduler=True) as c:
        watch = EdgeWatch(edge_config(full), c.kv, MasterSocket(str(haproxy_server.socket)))
        watch.start()
        alice = client("127.0.0.2")
        bob = client("127.0.0.3")
        try:
            await scenario(c, full, watch, haproxy_server, alice, bob, nodes)
        finally:
            await watch.close()
            await alice.close()
            await bob.close()


async def scenario(
    c: LocalCluster,
    full: Any,
    watch: EdgeWatch,
    haproxy: HaproxyServer,
    alice: aiohttp.ClientSession,
    bob: aiohttp.ClientSession,
    nodes: list[dict[str, Any]],
) -> None:
    port = {n["id"]: public_port(n) for n in nodes}
    await until(lambda: port_open(port["n0"]) and port_open(port["n1"]), 10, "n0, n1 on HAProxy")
    first = watch.reloads
    # Alice asks the scheduler, and connects where it says: HAProxy's port for n0.
    url = f"http://127.0.0.1:{c.settings.scheduler.port}/v1/endpoint"
    query = "?uid=alice&device=phone&platform=ios&version=1.0&region=north"

    async def answer() -> dict[str, Any] | None:
        async with alice.get(url + query, headers=as_user("alice")) as resp:
            return await resp.json() if resp.status == 200 else None

    await until(answer, 10, "an endpoint from the scheduler")
    got = await answer()
    assert got is not None and got["node"] == "n0"
    assert got["endpoint"] == nodes[0]["endpoint"]
    ws = await alice.ws_connect(f"{got['endpoint']}?ticket={got['ticket']}")
    assert (await ws.receive_json(timeout=5))["t"] == "welcome"
    (session,) = c.node("n0").sessions.values()
    assert session.transport.get_extra_info("peername")[0] == "127.0.0.2"
    pongs = 0

    async def ping() -> None:
        nonlocal pongs
        await ws.send_json({"t": "ping"})
        assert (await ws.receive_json(timeout=5))["t"] == "pong"
        pongs += 1

    # Reload 1: n2 joins; a new client reaches it through its new port.
    joined = Process([access_part(full, "n2", c.kv, c.presence)], connections=full.connections)
    assert await joined.start() is None
    try:
        await until(lambda: port_open(port["n2"]), 10, "n2 on HAProxy")
        await ping()
        ticket = c.ticket("bob", "phone", "n2")
        ws_bob = await bob.ws_connect(f"{nodes[2]['endpoint']}?ticket={ticket}")
        assert (await ws_bob.receive_json(timeout=5))["t"] == "welcome"
        (bobs,) = next(p.node for p in joined.parts if p.node).sessions.values()
        assert bobs.transport.get_extra_info("peername")[0] == "127.0.0.3"
        await ws_bob.close()
        # Reload 2: n1 drains and leaves HAProxy's configuration.
        c.node("n1").start_drain(0, "test")
        await until(lambda: not port_open(port["n1"]), 10, "n1 off HAProxy")
        assert "node_n1" not in haproxy.config.read_text()
        await ping()
    finally:
        await joined.close(0)
    # Reload 3: n2 vanished from the registry.
    await until(lambda: not port_open(port["n2"]), 10, "n2 off HAProxy")
    await until(lambda: watch.reloads >= first + 3, 5, "three reloads")
    await ping()

    # Alice's connection is held by a worker of the first configuration, new ones by the
    # newest: HAProxy's reloads dropped nothing.
    async def old_worker_holds_alice() -> bool:
        try:
            procs = await watch.master.processes()
        except BackendUnavailable:  # the master re-executing itself for a reload
            return False
        return len(procs.workers) >= 2 and max(w.reloads for w in procs.workers) >= 3

    await until(old_worker_holds_alice, 5, "an old worker holding alice, and a new one")
    result = await c.node("n0").pusher.push(["alice"], {"t": "news", "n": 1})
    assert result.delivered == 1, result
    frame = await ws.receive_json(timeout=5)
    assert frame == {"t": "news", "n": 1} or frame.get("n") == 1, frame
    await ping()
    assert pongs == 4
    await ws.close()
