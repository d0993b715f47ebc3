"""The real ``imctl lb watch`` process owning its HAProxy (no ``edge.master_socket``):
against a real etcd it starts HAProxy (master-worker, master CLI beside the file), reloads
a node added and a node drained into it, and on SIGTERM soft-stops it: HAProxy stops
listening at once, a connection it relays finishes undisturbed, and then no HAProxy
process is left. And ``imctl lb render --server`` against a running local cluster."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import yaml

from control.common.kv.etcd import EtcdKV
from control.common.proxyproto import header_length
from control.common.registry import NodeRecord, Registration, Registry
from control.edge.haproxy import MasterSocket
from control.settings import load_settings
from control.testing import IMCTL, ROOT, EtcdServer, free_port, local_config, port_open, until
from tests.cluster import LocalCluster

pytestmark = pytest.mark.timeout(60)


class Node:
    """Stands in for a node's PROXY v2 listener: takes the header, then echoes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Node:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(16)
            length = header_length(head)
            assert length is not None
            await reader.readexactly(length - 16)
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def pids(show_proc: str) -> set[int]:
    """Every pid (master and workers) in the master CLI's ``show proc``."""
    return {
        int(f[0]) for f in (line.split() for line in show_proc.splitlines()) if f and f[0].isdigit()
    }


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
async def etcd_kv(etcd_server: EtcdServer) -> AsyncIterator[EtcdKV]:
    kv = EtcdKV(etcd_server.endpoint, timeout_s=5)
    await kv.connect()
    yield kv
    await kv.close()


async def test_lb_watch_starts_reloads_and_soft_stops_its_haproxy(
    tmp_path: Path, etcd_server: EtcdServer, etcd_kv: EtcdKV, prefix: str
) -> None:
    haproxy_cfg = tmp_path / "haproxy.cfg"
    config = tmp_path / "imctl.yaml"
    local_config(
        config,
        cluster={
            "backend": "etcd",
            "prefix": prefix,
            "etcd": {"endpoints": [etcd_server.endpoint]},
        },
        edge={
            "config_path": str(haproxy_cfg),
            "first_port": 1024,
            "last_port": 65535,
            "reload_interval_s": 0.2,
        },
    )
    registry = Registry(etcd_kv, prefix)
    public = [free_port(), free_port()]
    leases: list[Registration] = []
    proc = await asyncio.create_subprocess_exec(
        *IMCTL, "lb", "watch", "--config", str(config),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with Node() as n0, Node() as n1:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert b"HAProxy master socket" in line, line
            master = MasterSocket(str(haproxy_cfg) + ".sock")
            started = await master.processes()
            assert started.workers, "HAProxy started with a worker"

            def record(i: int, node: Node) -> NodeRecord:
                endpoint = f"ws://127.0.0.1:{public[i]}/ws"
                return NodeRecord(f"n{i}", endpoint, "north", proxy=f"127.0.0.1:{node.port}")

            # A node added: reloaded into HAProxy, its public port relays to it.
            first = await registry.register(record(0, n0), ttl=10)
            leases.append(first)
            await until(lambda: port_open(public[0]), 10, "n0's port on HAProxy")
            leases.append(await registry.register(record(1, n1), ttl=10))
            await until(lambda: port_open(public[1]), 10, "n1's port on HAProxy")
            reader, writer = await asyncio.open_connection("127.0.0.1", public[0])
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
            # A node drained: reloaded out of it; the relayed connection stays.
            await first.publish(replace(first.record, state="draining"))
            await until(lambda: not port_open(public[0]), 10, "n0 off HAProxy")
            assert "node_n0" not in haproxy_cfg.read_text()
            assert (await master.processes()).master_reloads >= started.master_reloads + 3
            text = await master.command("show proc")
            everyone = pids(text)
            assert len(everyone) >= 3, text  # the master, the newest worker, the old one

            # SIGTERM: a soft stop. Listeners close now; the relayed connection goes on.
            proc.send_signal(signal.SIGTERM)
            await until(lambda: not port_open(public[1]), 10, "HAProxy's listeners closed")
            writer.write(b"still here")
            assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
            assert proc.returncode is None  # waiting for that connection to finish
            writer.close()
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            await until(lambda: not any(alive(p) for p in everyone), 5, "no HAProxy left")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for lease in leases:
            await lease.close()


async def test_lb_render_reads_a_running_local_cluster(tmp_path: Path) -> None:
    """HAProxy in front of `imctl up` (embedded registry): `imctl lb render --server` reads
    the nodes through the scheduler's admin API, as README says."""
    config = tmp_path / "imctl.yaml"
    written = local_config(config, access={"balancers": ["127.0.0.1/32"]})
    for i, node in enumerate(written["access"]["nodes"]):
        node["proxy_port"] = free_port()
        node["endpoint"] = f"ws://127.0.0.1:{20000 + i}/ws"
    written["edge"] = {"first_port": 20000, "last_port": 20099}
    config.write_text(yaml.safe_dump(written))
    output = tmp_path / "haproxy.cfg"
    async with LocalCluster(load_settings(str(config)), scheduler=True) as c:
        base = f"http://127.0.0.1:{c.settings.scheduler.port}"

        async def listed() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/nodes") as resp:
                return resp.status == 200 and len((await resp.json())["nodes"]) == 3

        await until(listed, 10, "the nodes at the scheduler")
        proc = await asyncio.create_subprocess_exec(
            *IMCTL, "lb", "render", "--config", str(config), "--server", base,
            "--output", str(output),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"routing north-1 (port 20000), north-2 (port 20001), south-1 (port 20002)" in err
    text = output.read_text()
    for node in written["access"]["nodes"]:
        assert f"server {node['id']} 127.0.0.1:{node['proxy_port']} send-proxy-v2" in text
