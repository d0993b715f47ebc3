"""The access nodes' configuration section, and the frozen ``NodeConfig`` one node runs on."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from control.common.auth import TokenTable
from control.common.config import (
    ID_PATTERN,
    REGION_PATTERN,
    ConnectionSettings,
    CorsSettings,
    HeartbeatSettings,
    RegistrySettings,
    TlsSettings,
    is_loopback,
)
from control.common.errors import ConfigError
from control.common.schema import setting
from control.common.tickets import TicketKeys
from control.gray.model import Release


@dataclass(frozen=True)
class AccessNodeSettings:
    """One access node's identity; ``imctl access --node-id`` picks its entry."""

    id: str = setting(doc="node id", pattern=ID_PATTERN)
    region: str = setting(doc="region", pattern=REGION_PATTERN)
    zone: str = setting("", "zone within the region")
    pool: str = setting("default", "pool (gray targets pick pools)")
    version: str = setting("1.0", "software version")
    host: str = setting("127.0.0.1", "listen address")
    port: int = setting(9100, "listen port (WebSocket and internal API)", ge=0, le=65535)
    endpoint: str = setting(
        "", "public WebSocket URL (default ws://host:port/ws, wss:// with access.tls)"
    )
    internal: str = setting(
        "", "internal API base URL (default http://host:port, https:// with access.tls)"
    )
    capacity: int = setting(10_000, "hard connection cap", ge=1)
    weight: float = setting(1.0, "relative share of new clients", ge=0)

    def public_endpoint(self, tls: bool = False) -> str:
        return self.endpoint or f"{'wss' if tls else 'ws'}://{self.host}:{self.port}/ws"

    def internal_url(self, tls: bool = False) -> str:
        return self.internal or f"{'https' if tls else 'http'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class AccessSettings:
    nodes: tuple[AccessNodeSettings, ...] = setting((), "access nodes of this cluster")
    max_frame_bytes: int = setting(65_536, "largest client frame accepted", ge=64)
    abuse_limit: int = setting(5, "bad frames before a connection is closed 1008", ge=1)
    frame_rate_per_s: float = setting(
        20.0, "client frames per second a connection may send (beyond: refused, a strike)", gt=0
    )
    frame_burst: float = setting(40.0, "client frames a connection may send at once", ge=1)
    max_backlog_bytes: int = setting(
        1_048_576, "unread bytes queued for a client before it is cut off", ge=65_536
    )
    platforms: tuple[str, ...] = setting(
        ("ios", "android", "web", "windows", "macos", "linux", "harmonyos", "miniprogram"),
        "platforms presence records as they are (counts and labels by platform); a client "
        "naming another is counted as 'other', so clients cannot grow them without bound",
    )
    handshake_rate_per_s: float = setting(500.0, "WebSocket upgrades per second", gt=0)
    handshake_burst: float = setting(1000.0, "upgrade burst", ge=1)
    handshake_rate_per_address_per_s: float = setting(
        50.0,
        "upgrades per second from one client address (IPv4, or IPv6 /64), spent before the "
        "node-wide budget: one address cannot take every client's turn. Behind a proxy that "
        "does not pass the client's address, every client shares the proxy's: raise it",
        gt=0,
    )
    handshake_burst_per_address: float = setting(100.0, "upgrade burst per client address", ge=1)
    handshake_addresses: int = setting(
        100_000, "client addresses whose handshake budget is tracked at once", ge=1
    )
    report_interval_s: float = setting(2.0, "load report period", gt=0, le=60)
    drain_s: float = setting(60.0, "drain window on SIGTERM", ge=0)
    drain_max_rate: float = setting(500.0, "reconnect frames per second at most", gt=0)
    reconnect_grace_s: float = setting(5.0, "close a told-to-reconnect client after", ge=0)
    internal_token: str = setting(
        "imctl-local-internal-token", "bearer token of the internal API", min_len=16
    )
    core: str = setting(
        "control.access.echo:EchoCore",
        "message core as module:Class",
        pattern=r"[A-Za-z_][\w.]*:[A-Za-z_]\w*",
    )
    core_options: Mapping[str, Any] = setting(MappingProxyType({}), "passed to the core")
    tls: TlsSettings = setting(
        TlsSettings(),
        "the nodes' certificate (one path for every node; each host may hold its own "
        "files there): WSS for clients, HTTPS for the internal API and /metrics",
    )

    def check(self, path: str) -> list[str]:
        problems = []
        for i, name in enumerate(self.platforms):
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name) or name == "other":
                problems.append(f"{path}.platforms[{i}]: bad platform name {name!r}")
        ids = [n.id for n in self.nodes]
        for i, nid in enumerate(ids):
            if ids.index(nid) != i:
                problems.append(f"{path}.nodes[{i}].id: duplicate node id {nid!r}")
        # Nodes on loopback share this machine; elsewhere each node is its own host.
        ports = [(n.host, n.port) for n in self.nodes if n.port and is_loopback(n.host)]
        for i, hp in enumerate(ports):
            if ports.index(hp) != i:
                problems.append(f"{path}.nodes[{i}].port: {hp[0]}:{hp[1]} used twice")
        return problems

    def node(self, node_id: str) -> AccessNodeSettings:
        for n in self.nodes:
            if n.id == node_id:
                return n
        known = ", ".join(n.id for n in self.nodes) or "none"
        raise ConfigError([f"access.nodes: no node {node_id!r} (known: {known})"])


@dataclass(frozen=True)
class NodeConfig:
    """Everything one access node needs, built from the whole Settings by launch: the node
    never sees the other sections. Its derived timings live here, one property each."""

    node: AccessNodeSettings
    access: AccessSettings
    heartbeat: HeartbeatSettings
    ticket_keys: TicketKeys
    #: key prefix of the cluster in the key-value store (cluster.prefix)
    prefix: str = "/imctl"
    registry: RegistrySettings = RegistrySettings()
    #: presence.flush_s: heartbeats are flushed to presence this often
    flush_s: float = 1.0
    connections: ConnectionSettings = ConnectionSettings()
    #: who may read /metrics (admin.metrics_readers()); None for anyone
    metrics_readers: TokenTable | None = None
    #: gray.releases from config (the node follows these and the stored ones)
    releases: tuple[Release, ...] = ()
    #: cors: the web origins whose pages may open a WebSocket (empty: Origin not checked)
    cors: CorsSettings = CorsSettings()

    @property
    def endpoint(self) -> str:
        """The WebSocket URL clients are given (wss:// when the node serves TLS)."""
        return self.node.public_endpoint(self.access.tls.enabled)

    @property
    def internal_url(self) -> str:
        return self.node.internal_url(self.access.tls.enabled)

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def idle_timeout_s(self) -> float:
        """A connection silent this long is closed as idle."""
        return self.heartbeat.timeout_s

    @property
    def idle_check_s(self) -> float:
        """How often idle connections are looked for: at most half an interval late."""
        return self.heartbeat.sweep_s

    @property
    def close_timeout_s(self) -> float:
        """How long a send or close may wait for the peer to read before the connection is
        dropped; a live client reads within a heartbeat interval."""
        return min(self.heartbeat.interval_s, 5.0)

    @property
    def report_interval_s(self) -> float:
        """Load reports are written this often."""
        return self.access.report_interval_s

    @property
    def push_keepalive_s(self) -> float:
        """Pooled internal-API connections idle out before the peers' idle deadline."""
        return self.connections.client_keepalive_s
