"""An in-process cluster on real sockets: access nodes (and optionally a scheduler and the
controller) on one embedded store and presence, for tests that drive them as clients do."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from control.access.node import AccessNode
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.launch import Process, access_part, controller_part, make_presence, scheduler_part
from control.presence.cluster import PresenceCluster
from control.settings import Settings, parse_settings
from tests.servers import free_port
from tests.tokens import CLIENT_AUTH

SECRET = "test-ticket-secret-0123456789"


def cluster_settings(nodes: int = 2, **sections: Any) -> Settings:
    regions = ["north", "south"]
    data: dict[str, Any] = {
        "regions": {"known": regions},
        "registry": {"lease_ttl_s": 2, "verify_s": 5},
        "heartbeat": {"interval_s": 1, "misses": 3},
        "tickets": {"active_kid": "t1", "keys": {"t1": SECRET}},
        "client_auth": CLIENT_AUTH,
        "access": {
            "nodes": [
                {
                    "id": f"n{i}",
                    "region": regions[i % 2],
                    "zone": "a",
                    "port": free_port(),
                    "capacity": 5000,
                }
                for i in range(nodes)
            ],
            "internal_token": "test-internal-token-123",
            "report_interval_s": 0.2,
        },
        "presence": {"flush_s": 0.1},
        "scheduler": {
            "port": free_port(),
            "rebuild_s": 0,
            "rate_limit": {"rate_per_s": 100000, "burst": 100000},
        },
        "controller": {"port": free_port(), "leader_ttl_s": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_settings(data, "test")


class LocalCluster:
    def __init__(self, settings: Settings, scheduler: bool = False, controller: bool = False):
        self.settings = settings
        self.kv: KeyValueStore = EmbeddedKV()
        self.presence: PresenceCluster = make_presence(settings)
        self.process = Process(connections=settings.connections)
        self.with_scheduler = scheduler
        self.with_controller = controller
        self.keys = settings.tickets.ticket_keys()

    async def __aenter__(self) -> LocalCluster:
        await self.kv.connect()
        parts = [
            access_part(self.settings, n.id, self.kv, self.presence)
            for n in self.settings.access.nodes
        ]
        if self.with_controller:
            parts.append(controller_part(self.settings, self.kv, self.presence))
        if self.with_scheduler:
            parts.append(scheduler_part(self.settings, kv=self.kv, presence=self.presence))
        self.process.parts = parts
        error = await self.process.start()
        assert error is None, error
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.process.close(0)
        await self.presence.close()
        await self.kv.close()

    def node(self, node_id: str) -> AccessNode:
        for part in self.process.parts:
            if part.node is not None and part.node.id == node_id:
                return part.node
        raise KeyError(node_id)

    def ticket(self, uid: str, device: str, node: str, ttl: float = 60) -> str:
        return self.keys.sign(uid, device, node, int(time.time() + ttl))

    def ws_url(self, node: str, ticket: str | None) -> str:
        cfg = self.settings.access.node(node)
        query = f"?ticket={ticket}" if ticket is not None else ""
        return f"ws://127.0.0.1:{cfg.port}/ws{query}"

    def base(self, node: str) -> str:
        return f"http://127.0.0.1:{self.settings.access.node(node).port}"

    async def connect(
        self, http: aiohttp.ClientSession, uid: str, node: str, device: str = "phone"
    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        ws = await http.ws_connect(self.ws_url(node, self.ticket(uid, device, node)))
        welcome = await ws.receive_json(timeout=5)
        assert welcome["t"] == "welcome", welcome
        return ws, welcome
