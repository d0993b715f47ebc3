"""The whole system as separate real processes on real etcd and real Redis, for the e2e
tests that drive it as a client and an operator would: its config, its processes, and the
HTTP looks they poll."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from control.common.tickets import TicketKeys
from control.testing import (
    EtcdServer,
    RedisServer,
    free_port,
    kill_process,
    logged,
    merge_sections,
    run_imctl,
    spawn_imctl,
    stop_processes,
    until,
    wait_port,
)
from tests.tokens import CLIENT_AUTH, as_user

SECRET = "e2e-ticket-secret-0123456789"
TOKEN = "e2e-internal-token-0123"
KEYS = TicketKeys({"k": SECRET.encode()}, "k")
LEASE_TTL = 2
WINDOW = 1.0  # registry.self_preservation.window_s
NODES: list[dict[str, Any]] = [
    {"id": "n0", "region": "north", "zone": "a"},
    {"id": "n1", "region": "north", "zone": "b"},
]


class Cluster:
    """The config of a cluster of real processes and the processes started from it: the
    scheduler, the controller(s) and the access nodes (``nodes``, by default n0 and n1 in
    one region), each logging to ``<tmp>/<name>.log``. ``sections`` are merged over the
    defaults one level deep."""

    def __init__(
        self,
        tmp: Path,
        etcd: EtcdServer,
        redis: list[RedisServer],
        nodes: list[dict[str, Any]] | None = None,
        **sections: Any,
    ) -> None:
        self.tmp = tmp
        nodes = [dict(n, port=free_port()) for n in (nodes or NODES)]
        self.ports = {"scheduler": free_port(), "controller": free_port()}
        self.ports.update({n["id"]: n["port"] for n in nodes})
        self.prefix = prefix = f"/e2e-{self.ports['scheduler']}"
        config = {
            "cluster": {
                "name": "e2e",
                "backend": "etcd",
                "prefix": prefix,
                "etcd": {"endpoints": [etcd.endpoint]},
            },
            "regions": {
                "known": ["north", "south"],
                "preference": {"north": ["north", "south"], "south": ["south", "north"]},
            },
            "registry": {
                "lease_ttl_s": LEASE_TTL,
                "verify_s": 5,
                # a lone node's loss is final (its users evicted) one window after it vanished
                "self_preservation": {"window_s": WINDOW},
            },
            "heartbeat": {"interval_s": 2, "misses": 3},
            "tickets": {"active_kid": "k", "keys": {"k": SECRET}},
            "client_auth": CLIENT_AUTH,
            "scheduler": {
                "port": self.ports["scheduler"],
                "rebuild_s": 0,
                "rate_limit": {"rate_per_s": 100000, "burst": 100000},
            },
            "access": {
                "nodes": nodes,
                "internal_token": TOKEN,
                "report_interval_s": 0.5,
                "drain_max_rate": 150,
                "handshake_rate_per_s": 5000,
                "handshake_burst": 5000,
                # Its 1,000 clients are all 127.0.0.1: no per-address limits.
                "handshake_rate_per_address_per_s": 5000,
                "handshake_burst_per_address": 5000,
                "reconnect_grace_s": 3,
                "drain_s": 1,
            },
            "presence": {
                "backend": "redis",
                "key_prefix": f"e2e{self.ports['scheduler']}:",
                "flush_s": 0.5,
                "shards": [{"id": f"s{i}", "url": r.url} for i, r in enumerate(redis)],
            },
            "controller": {"port": self.ports["controller"], "leader_ttl_s": 2},
            "connections": {"max_pending_per_address": 4096},
            "log_level": "warning",
        }
        self.config = tmp / "cluster.yaml"
        self.config.write_text(yaml.safe_dump(merge_sections(config, sections)))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = f"http://127.0.0.1:{self.ports['scheduler']}"

    def start(self, *names: str, together: bool = False) -> None:
        """Each of ``scheduler``, a node id, or ``controller`` — and ``controller-<x>`` for
        more controllers of the same cluster, each on a port of its own — until it listens;
        ``together``: all started at once, then each waited for (no order among them)."""
        for name in names:
            env: dict[str, str] = {}
            if name.startswith("controller"):
                args = ["controller", "--config", str(self.config)]
                port = self.ports.setdefault(name, free_port())
                env["IMCTL_CONTROLLER__PORT"] = str(port)
            elif name == "scheduler":
                args = ["scheduler", "--config", str(self.config)]
            else:
                args = ["access", "--config", str(self.config), "--node-id", name]
            self.procs[name] = spawn_imctl(args, log=self.log(name), env=env)
            if not together:
                wait_port(self.ports[name], 20)
        for name in names if together else ():
            wait_port(self.ports[name], 20)

    def kill(self, name: str) -> None:
        kill_process(self.procs.pop(name))

    def stop_all(self) -> None:
        stop_processes(self.procs.values())

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def logged(self, name: str, text: str) -> bool:
        return logged(self.log(name), text)

    def ws(self, node: str, uid: str, device: str = "phone") -> str:
        ticket = KEYS.sign(uid, device, node, int(time.time()) + 60)
        return f"ws://127.0.0.1:{self.ports[node]}/ws?ticket={ticket}"

    def imctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_imctl([*args, "--server", self.url])


async def get(http: aiohttp.ClientSession, url: str, uid: str | None = None) -> Any:
    """GET ``url``'s JSON, proving ``uid`` (for /v1/endpoint) when given."""
    async with http.get(url, headers=as_user(uid) if uid else None) as resp:
        return await resp.json()


async def counts_by_node(http: aiohttp.ClientSession, c: Cluster) -> dict[str, int]:
    return (await get(http, f"{c.url}/v1/presence/count?by=node"))["counts"]


async def metrics(http: aiohttp.ClientSession, c: Cluster, name: str) -> str:
    """The text of process ``name``'s /metrics."""
    async with http.get(f"http://127.0.0.1:{c.ports[name]}/metrics") as resp:
        return await resp.text()


async def ready(http: aiohttp.ClientSession, c: Cluster, nodes: set[str]) -> None:
    async def check() -> bool:
        try:
            listed = await get(http, f"{c.url}/v1/nodes")
        except aiohttp.ClientError:
            return False
        up = {n["id"] for n in listed["nodes"] if n["state"] == "up"}
        return nodes <= up

    await until(check, 20, f"nodes {sorted(nodes)} up in the scheduler")
