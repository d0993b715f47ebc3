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
    Network,
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
        "",
        "public WebSocket URL clients are given (default ws://host:port/ws, wss:// with "
        "access.tls); behind the load balancer, this node's address on it "
        "(ws://<edge.public_host>:<port>/ws, or wss://<SNI name>:<edge.tls_port>/ws), which "
        "`imctl lb render` routes to proxy_port",
    )
    proxy_port: int = setting(
        0,
        "port of the listener for the load balancer (on host): each connection must come "
        "from access.balancers and start with a PROXY v2 header naming the client (0: none)",
        ge=0,
        le=65535,
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

    def proxy_address(self) -> str:
        """host:port the balancer relays this node's clients to; "" when none."""
        if not self.proxy_port:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.proxy_port}"


@dataclass(frozen=True)
class AutoRebalanceSettings:
    """The leader controller's automatic rebalance: a region whose max/mean connections per
    node stays above ``trigger_ratio`` for ``hot_for_s`` (no drain, no release moving
    clients) is rebalanced as ``imctl access rebalance`` would, down to ``until_ratio``.
    Every timing here derives from ``check_s``."""

    enabled: bool = setting(False, "rebalance automatically")
    trigger_ratio: float = setting(
        1.5, "max/mean connections per node in a region that starts a rebalance", gt=1, le=100
    )
    until_ratio: float = setting(1.1, "max/mean the rebalance brings it to", ge=1, le=100)
    max_rate: float = setting(
        100.0, "reconnect frames a second over the whole cluster at most", gt=0, le=100_000
    )
    check_s: float = setting(10.0, "how often the loads are looked at", gt=0, le=3600)

    @property
    def hot_for_s(self) -> float:
        """A region must stay above the trigger this long (three looks): one look at a
        moment's imbalance (clients landing after a drain) starts nothing."""
        return 3 * self.check_s

    @property
    def rest_s(self) -> float:
        """After a rebalance ends, the automatic mode waits this long before it may start
        another (one that gave up short of its ratio does not start again at once)."""
        return 6 * self.check_s

    def check(self, path: str) -> list[str]:
        if self.trigger_ratio <= self.until_ratio:
            return [
                f"{path}.trigger_ratio: must be above until_ratio ({self.trigger_ratio:g} <= "
                f"{self.until_ratio:g}): the gap between them keeps the rebalance from "
                "flapping"
            ]
        return []


@dataclass(frozen=True)
class RebalanceSettings:
    auto: AutoRebalanceSettings = setting(AutoRebalanceSettings(), "automatic rebalance")


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
    balancers: tuple[Network, ...] = setting(
        (),
        "load balancers (CIDR, e.g. 127.0.0.1/32) that may connect to a node's proxy_port; "
        "their PROXY v2 header names the client, whose address logs, handshake budgets and "
        "presence then see",
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
    rebalance: RebalanceSettings = setting(RebalanceSettings(), "rebalance after scale-out")
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
        for i, n in enumerate(self.nodes):
            if n.proxy_port and not self.balancers:
                problems.append(f"{path}.nodes[{i}].proxy_port: needs {path}.balancers")
            if n.proxy_port and n.proxy_port == n.port:
                problems.append(f"{path}.nodes[{i}].proxy_port: the same as port {n.port}")
        # Nodes on loopback share this machine; elsewhere each node is its own host.
        seen: dict[tuple[str, int], str] = {}
        for i, n in enumerate(self.nodes):
            for key, port in (("port", n.port), ("proxy_port", n.proxy_port)):
                if not port or not is_loopback(n.host):
                    continue
                where = f"{path}.nodes[{i}].{key}"
                if (n.host, port) in seen:
                    problems.append(f"{where}: {n.host}:{port} used twice")
                seen.setdefault((n.host, port), where)
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
