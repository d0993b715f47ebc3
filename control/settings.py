"""The whole configuration: frozen sections, loaded from YAML with ``IMCTL_`` overrides.

Defaults < file < environment. ``IMCTL_SCHEDULER__PORT=9000`` sets ``scheduler.port`` (``__``
separates levels; values are read as YAML scalars). Every problem is reported at once, each
naming where it came from, its key path and what is expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from control.common.auth import Grant, TokenTable
from control.common.client_auth import VerifyKey, parse_key
from control.common.errors import ConfigError
from control.common.geoip import CONTINENT, GeoDatabase, GeoError
from control.common.guard import GuardLimits
from control.common.registry import NodeRecord, PreservationPolicy
from control.common.schema import build, register_converter, setting
from control.common.secrets import weakness
from control.common.tickets import TicketKeys
from control.gray.model import Release

ENV_PREFIX = "IMCTL_"
RESERVED_ENV = frozenset({"IMCTL_CONFIG", "IMCTL_SERVER", "IMCTL_TOKEN"})
REGION_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _cidr(data: Any, path: str, problems: list[str]) -> Network | None:
    """A network in config (``10.0.0.0/8``); host bits must be zero."""
    if not isinstance(data, str):
        problems.append(f"{path}: expected a CIDR like 10.0.0.0/8, got {data!r}")
        return None
    try:
        return ipaddress.ip_network(data.strip(), strict=True)
    except ValueError as exc:
        problems.append(f"{path}: bad CIDR {data!r} ({exc})")
        return None


register_converter(Network, _cidr)


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = setting(
        ("127.0.0.1:2379",), "etcd client endpoints host:port", min_len=1
    )
    timeout_s: float = setting(5.0, "per-request timeout", gt=0, le=60)

    def check(self, path: str) -> list[str]:
        problems = []
        for i, ep in enumerate(self.endpoints):
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(f"{path}.endpoints[{i}]: expected host:port, got {ep!r}")
        return problems


@dataclass(frozen=True)
class ClusterSettings:
    name: str = setting("local", "cluster name shown by tools", pattern=ID_PATTERN)
    prefix: str = setting("/imctl", "key prefix in etcd", pattern=r"/[A-Za-z0-9_./-]*")
    backend: Literal["embedded", "etcd"] = setting("embedded", "registry/store backend")
    etcd: EtcdSettings = setting(EtcdSettings(), "etcd connection")


@dataclass(frozen=True)
class StaticNode:
    """A node listed in config: for small deployments without self-registration."""

    id: str = setting(doc="node id", pattern=ID_PATTERN)
    endpoint: str = setting(doc="WebSocket URL clients connect to", pattern=r"wss?://\S+")
    region: str = setting(doc="region", pattern=REGION_PATTERN)
    zone: str = setting("", "zone within the region")
    pool: str = setting("default", "pool (gray targets pick pools)")
    version: str = setting("0", "software version")
    capacity: int = setting(10_000, "connection cap", ge=1)
    weight: float = setting(1.0, "relative share of new clients", ge=0)
    state: Literal["up", "draining"] = setting("up", "up or draining")

    def record(self) -> NodeRecord:
        return NodeRecord(
            id=self.id,
            endpoint=self.endpoint,
            region=self.region,
            zone=self.zone,
            pool=self.pool,
            version=self.version,
            capacity=self.capacity,
            weight=self.weight,
            state=self.state,
        )


@dataclass(frozen=True)
class SelfPreservationSettings:
    threshold: float = setting(0.5, "fraction of nodes lost at once that trips it", gt=0, le=1)
    window_s: float = setting(10.0, "losses within this window count as at once", gt=0)
    grace_s: float = setting(30.0, "how long the last view is held", ge=0)

    def policy(self) -> PreservationPolicy:
        return PreservationPolicy(self.threshold, self.window_s, self.grace_s)


@dataclass(frozen=True)
class RegistrySettings:
    lease_ttl_s: int = setting(10, "node lease TTL; refreshed every TTL/3", ge=2, le=300)
    verify_s: float = setting(10.0, "check a quiet watch against a listing this often", gt=0)
    static_nodes: tuple[StaticNode, ...] = setting((), "nodes listed in config")
    self_preservation: SelfPreservationSettings = setting(SelfPreservationSettings(), "")

    def check(self, path: str) -> list[str]:
        seen: set[str] = set()
        problems = []
        for i, node in enumerate(self.static_nodes):
            if node.id in seen:
                problems.append(f"{path}.static_nodes[{i}].id: duplicate node id {node.id!r}")
            seen.add(node.id)
        return problems


@dataclass(frozen=True)
class HeartbeatSettings:
    """The base timing value: timeouts and sweeps derive from the interval."""

    interval_s: float = setting(30.0, "client ping interval", ge=1, le=600)
    misses: int = setting(3, "missed pings before a connection is dead", ge=2, le=10)

    @property
    def timeout_s(self) -> float:
        return self.interval_s * self.misses


@dataclass(frozen=True)
class BackoffSettings:
    base_s: float = setting(1.0, "first reconnect delay", gt=0, le=60)
    factor: float = setting(2.0, "growth per attempt", ge=1, le=10)
    jitter: float = setting(0.5, "random share of each delay", ge=0, le=1)
    max_s: float = setting(60.0, "delay cap", gt=0, le=3600)

    def check(self, path: str) -> list[str]:
        if self.max_s < self.base_s:
            return [f"{path}.max_s: must be >= base_s ({self.base_s})"]
        return []


@dataclass(frozen=True)
class TicketSettings:
    ttl_s: int = setting(60, "ticket lifetime", ge=5, le=3600)
    active_kid: str = setting("k1", "key id used to sign", pattern=ID_PATTERN)
    keys: Mapping[str, str] = setting(
        MappingProxyType({"k1": "imctl-local-development-key-change-me"}),
        "key id -> secret (at least 16 characters); all are accepted",
    )

    def check(self, path: str) -> list[str]:
        problems = []
        if self.active_kid not in self.keys:
            problems.append(f"{path}.active_kid: {self.active_kid!r} is not among keys")
        for kid, secret in self.keys.items():
            if isinstance(secret, str) and len(secret) < 16:
                problems.append(f"{path}.keys.{kid}: secret must be at least 16 characters")
        return problems

    def ticket_keys(self) -> TicketKeys:
        return TicketKeys({k: v.encode() for k, v in self.keys.items()}, self.active_kid)


@dataclass(frozen=True)
class RateLimitSettings:
    rate_per_s: float = setting(20.0, "endpoint requests per second per client IP", gt=0)
    burst: float = setting(40.0, "bucket size per client IP", ge=1)
    max_clients: int = setting(100_000, "client IPs tracked at once", ge=1)


@dataclass(frozen=True)
class SchedulerSettings:
    host: str = setting("127.0.0.1", "listen address")
    port: int = setting(8080, "listen port", ge=0, le=65535)
    trusted_proxies: tuple[Network, ...] = setting((), "peers whose X-Forwarded-For is believed")
    fallbacks: int = setting(2, "fallback nodes per answer", ge=0, le=8)
    retry_after_s: int = setting(5, "Retry-After on 503", ge=1, le=3600)
    rebuild_s: float = setting(0.05, "coalesce registry changes this long", ge=0, le=5)
    rate_limit: RateLimitSettings = setting(RateLimitSettings(), "per-client-IP token bucket")
    shutdown_grace_s: float = setting(
        0.0,
        "on SIGTERM, answer /readyz 503 and keep serving this long before stopping, so a "
        "load balancer stops sending first (0: stop at once)",
        ge=0,
        le=300,
    )
    max_event_tails: int = setting(
        16, "open GET /v1/presence/events at once (each holds a shard connection)", ge=1, le=1024
    )


# A place a geo database names: country (ISO 3166-1), country-subdivision (ISO 3166-2),
# or a continent code.
PLACE_PATTERN = r"[A-Z]{2}(-[A-Z0-9]{1,3})?|" + CONTINENT + r"[A-Z]{2}"


@dataclass(frozen=True)
class GeoIPSettings:
    database: str = setting(
        "", "MaxMind DB file, GeoIP2/GeoLite2 City or Country (empty: off)", max_len=4096
    )
    places: Mapping[str, str] = setting(
        MappingProxyType({}), "place -> region; a place is CC-SUB (ISO 3166-2), CC or continent:XX"
    )
    reload_s: float = setting(60.0, "look for a replaced database file this often", gt=0, le=86400)

    def check(self, path: str) -> list[str]:
        problems = []
        for place in self.places:
            if not re.fullmatch(PLACE_PATTERN, place):
                problems.append(
                    f"{path}.places.{place}: expected a place like CN, CN-GD or continent:EU"
                )
        if not self.database:
            if self.places:
                problems.append(f"{path}.database: required when places are given")
            return problems
        if not self.places:
            problems.append(f"{path}.places: empty, so the database would place no client")
        try:
            GeoDatabase(self.database).close()
        except GeoError as exc:
            problems.append(f"{path}.database: {exc}")
        return problems


@dataclass(frozen=True)
class RegionSettings:
    known: tuple[str, ...] = setting(("local",), "every region name", min_len=1)
    default: str = setting("", "region for clients no rule places (empty: none)")
    cidrs: Mapping[Network, str] = setting(MappingProxyType({}), "client network -> region")
    geoip: GeoIPSettings = setting(GeoIPSettings(), "client IP -> place, after the CIDRs")
    preference: Mapping[str, tuple[str, ...]] = setting(
        MappingProxyType({}), "region -> regions to try, nearest first"
    )

    def check(self, path: str) -> list[str]:
        problems = []
        known = set(self.known)
        for i, name in enumerate(self.known):
            if not re.fullmatch(REGION_PATTERN, name):
                problems.append(f"{path}.known[{i}]: bad region name {name!r}")
        if self.default and self.default not in known:
            problems.append(f"{path}.default: unknown region {self.default!r}")
        for net, region in self.cidrs.items():
            if region not in known:
                problems.append(f"{path}.cidrs.{net}: unknown region {region!r}")
        for place, region in self.geoip.places.items():
            if region not in known:
                problems.append(f"{path}.geoip.places.{place}: unknown region {region!r}")
        for region, ranked in self.preference.items():
            if region not in known:
                problems.append(f"{path}.preference.{region}: unknown region {region!r}")
            for j, other in enumerate(ranked):
                if other not in known:
                    problems.append(f"{path}.preference.{region}[{j}]: unknown region {other!r}")
            if len(set(ranked)) != len(ranked):
                problems.append(f"{path}.preference.{region}: a region is listed twice")
        return problems


@dataclass(frozen=True)
class GraySettings:
    releases: tuple[Release, ...] = setting((), "releases from config (the store adds more)")

    def check(self, path: str) -> list[str]:
        names = [r.name for r in self.releases]
        return [
            f"{path}.releases: duplicate release name {n!r}"
            for n in sorted({n for n in names if names.count(n) > 1})
        ]


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
    endpoint: str = setting("", "public WebSocket URL (default ws://host:port/ws)")
    internal: str = setting("", "internal API base URL (default http://host:port)")
    capacity: int = setting(10_000, "hard connection cap", ge=1)
    weight: float = setting(1.0, "relative share of new clients", ge=0)

    def public_endpoint(self) -> str:
        return self.endpoint or f"ws://{self.host}:{self.port}/ws"

    def internal_url(self) -> str:
        return self.internal or f"http://{self.host}:{self.port}"


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
        ports = [(n.host, n.port) for n in self.nodes if n.port and _is_loopback(n.host)]
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
class ConnectionSettings:
    """Every process's listening sockets: connections that are not (yet) sessions."""

    idle_timeout_s: float = setting(
        5.0,
        "a connection that has not sent a whole request head this long after it opened or "
        "after its last answer is closed (slow headers, idle keep-alive, never upgraded)",
        gt=0,
        le=300,
    )
    max_pending: int = setting(
        4096,
        "connections of this process that are not WebSocket sessions, at most; past it a "
        "new connection gets a 503 and is closed",
        ge=1,
    )
    max_pending_per_address: int = setting(
        256, "the same, per client address (IPv4, or IPv6 /64)", ge=1
    )
    log_interval_s: float = setting(
        10.0,
        "malformed requests, refused connections and failing accept() are logged once per "
        "interval per kind, with a count (metrics count every one)",
        gt=0,
        le=3600,
    )

    @property
    def client_keepalive_s(self) -> float:
        """How long our own clients (the push fan-out) keep an idle pooled connection to a
        peer: well inside the peer's idle deadline, so no request picks up one the peer has
        just closed."""
        return self.idle_timeout_s / 2

    def limits(self) -> GuardLimits:
        return GuardLimits(
            self.idle_timeout_s, self.max_pending, self.max_pending_per_address, self.log_interval_s
        )


@dataclass(frozen=True)
class ShardSettings:
    id: str = setting(doc="shard id (stable: the ring hashes on it)", pattern=ID_PATTERN)
    url: str = setting("", "redis://host:port/db (unused by the embedded backend)")
    weight: int = setting(1, "share of users", ge=1, le=100)


@dataclass(frozen=True)
class PresenceSettings:
    backend: Literal["embedded", "redis"] = setting("embedded", "status cluster backend")
    shards: tuple[ShardSettings, ...] = setting(
        (ShardSettings(id="s0"),), "status cluster shards", min_len=1
    )
    key_prefix: str = setting("imctl:", "Redis key prefix", pattern=r"[A-Za-z0-9_.:-]{1,32}")
    vnodes: int = setting(160, "virtual nodes per shard on the ring", ge=1, le=10_000)
    flush_s: float = setting(1.0, "heartbeat batches are flushed this often", gt=0, le=60)

    def check(self, path: str) -> list[str]:
        problems = []
        ids = [s.id for s in self.shards]
        if len(set(ids)) != len(ids):
            problems.append(f"{path}.shards: shard ids must be unique")
        if self.backend == "redis":
            for i, shard in enumerate(self.shards):
                if not shard.url.startswith(("redis://", "rediss://", "unix://")):
                    problems.append(f"{path}.shards[{i}].url: expected redis://host:port/db")
        return problems


@dataclass(frozen=True)
class ControllerSettings:
    host: str = setting("127.0.0.1", "listen address (health, metrics)")
    port: int = setting(8090, "listen port", ge=0, le=65535)
    leader_ttl_s: int = setting(5, "leader lease TTL", ge=2, le=60)
    sweep_batch: int = setting(10_000, "entries expired per shard per pass", ge=1)


@dataclass(frozen=True)
class TokenSettings:
    name: str = setting(doc="who holds it (shown in audit records)", pattern=ID_PATTERN)
    token: str = setting(doc="the bearer secret", min_len=16)
    role: Literal["viewer", "operator"] = setting("viewer", "viewer reads, operator changes")


@dataclass(frozen=True)
class AdminSettings:
    tokens: tuple[TokenSettings, ...] = setting(
        (), "admin API bearer tokens; none means open, allowed only on loopback"
    )
    metrics: Literal["open", "viewer"] = setting(
        "open",
        "who reads /metrics on every process: anyone who reaches the listener (open), or "
        "callers with a viewer or operator token (viewer; Prometheus sends it as "
        "authorization.credentials)",
    )

    def grants(self) -> TokenTable:
        return TokenTable.of(Grant(t.name, t.token, t.role) for t in self.tokens)

    def metrics_readers(self) -> TokenTable | None:
        """Who may read /metrics: None for anyone."""
        return self.grants() if self.metrics == "viewer" else None


# Public (it is in this file): taken only on loopback, so a fresh checkout works and a
# deployment must bring its own key.
BUILT_IN_CLIENT_KEY = "imctl-built-in-client-key-loopback-only-not-secret"


@dataclass(frozen=True)
class AuthCallbackSettings:
    url: str = setting(
        "",
        'the app\'s auth service: POST {"token": ...} -> {"uid", "expires_in"?}',
        pattern=r"(https?://\S+)?",
    )
    timeout_s: float = setting(2.0, "an answer slower than this is a failure (503)", gt=0, le=30)
    failures: int = setting(5, "failures in a row that open the circuit breaker", ge=1, le=1000)
    open_s: float = setting(
        30.0,
        "an open breaker refuses (503) this long, then lets one trial call through",
        gt=0,
        le=3600,
    )
    cache_s: float = setting(
        60.0,
        "an accepted credential is believed this long (less when the answer's expires_in says so)",
        ge=0,
        le=86400,
    )


@dataclass(frozen=True)
class ClientAuthSettings:
    """How a client proves its uid to GET /v1/endpoint (Authorization: Bearer ...)."""

    mode: Literal["jwt", "callback", "trust"] = setting(
        "jwt",
        "jwt: a JWT whose sub is the uid; callback: the app's auth service decides; trust: "
        "uid= taken as given (tests and benchmarks, loopback listeners only)",
    )
    keys: Mapping[str, str] = setting(
        MappingProxyType({"dev": BUILT_IN_CLIENT_KEY}),
        "key id (the JWT's kid) -> HS256 secret (at least 32 characters) or PEM public key "
        "(RSA: RS256, EC P-256: ES256); the built-in one only on loopback",
    )
    token_kid: str = setting(
        "", "the HS256 key `imctl token` signs with (empty: the first HS256 key)"
    )
    jwks_url: str = setting(
        "", "JWK set of the app's signing keys (empty: none)", pattern=r"(https?://\S+)?"
    )
    jwks_refresh_s: float = setting(
        300.0, "fetch the JWK set this often (a failed fetch: a tenth of it)", ge=10, le=86400
    )
    audience: str = setting("imctl", "required aud claim (empty: a token must carry no aud)")
    issuer: str = setting("", "required iss claim (empty: not checked)")
    leeway_s: float = setting(5.0, "clock skew allowed on exp, nbf and iat", ge=0, le=300)
    cache_size: int = setting(
        65_536, "verified credentials remembered until their expiry (LRU)", ge=0, le=10_000_000
    )
    callback: AuthCallbackSettings = setting(AuthCallbackSettings(), "mode: callback")

    def check(self, path: str) -> list[str]:
        problems = []
        for kid, text in self.keys.items():
            if not isinstance(text, str):
                continue  # already reported by the type check
            try:
                parse_key(kid, text)
            except ValueError as exc:
                problems.append(f"{path}.keys.{kid}: {exc}")
        if self.token_kid and self.token_kid not in self.hs256_secrets():
            problems.append(f"{path}.token_kid: {self.token_kid!r} is not an HS256 key in keys")
        if self.mode == "jwt" and not self.keys and not self.jwks_url:
            problems.append(f"{path}.keys: mode jwt needs keys or a jwks_url")
        if self.mode == "callback" and not self.callback.url:
            problems.append(f"{path}.callback.url: required with mode callback")
        return problems

    def hs256_secrets(self) -> dict[str, str]:
        return {
            kid: text
            for kid, text in self.keys.items()
            if isinstance(text, str) and not text.lstrip().startswith("-----BEGIN")
        }

    def verify_keys(self) -> dict[str, VerifyKey]:
        return {kid: parse_key(kid, text) for kid, text in self.keys.items()}

    def minting_key(self) -> tuple[str, str] | None:
        """(kid, secret) `imctl token` signs with, if the config has an HS256 key."""
        secrets = self.hs256_secrets()
        kid = self.token_kid or next(iter(secrets), "")
        return (kid, secrets[kid]) if kid in secrets else None


@dataclass(frozen=True)
class Settings:
    cluster: ClusterSettings = setting(ClusterSettings(), "")
    registry: RegistrySettings = setting(RegistrySettings(), "")
    scheduler: SchedulerSettings = setting(SchedulerSettings(), "")
    heartbeat: HeartbeatSettings = setting(HeartbeatSettings(), "")
    backoff: BackoffSettings = setting(BackoffSettings(), "")
    tickets: TicketSettings = setting(TicketSettings(), "")
    regions: RegionSettings = setting(RegionSettings(), "")
    gray: GraySettings = setting(GraySettings(), "")
    admin: AdminSettings = setting(AdminSettings(), "")
    client_auth: ClientAuthSettings = setting(ClientAuthSettings(), "")
    access: AccessSettings = setting(AccessSettings(), "")
    presence: PresenceSettings = setting(PresenceSettings(), "")
    controller: ControllerSettings = setting(ControllerSettings(), "")
    connections: ConnectionSettings = setting(ConnectionSettings(), "")
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "log level")
    log_format: Literal["text", "json"] = setting(
        "text", "text for people, json (one object a line) for log shippers"
    )

    def listeners(self) -> list[tuple[str, str]]:
        """Every address a process of this config listens on, with its key path."""
        out = [("scheduler.host", self.scheduler.host), ("controller.host", self.controller.host)]
        out += [(f"access.nodes[{i}].host", n.host) for i, n in enumerate(self.access.nodes)]
        return out

    def secrets(self) -> list[tuple[str, str]]:
        """Every secret in the config, with its key path (never logged)."""
        out = [(f"tickets.keys.{kid}", key) for kid, key in self.tickets.keys.items()]
        out.append(("access.internal_token", self.access.internal_token))
        out += [(f"admin.tokens[{i}].token", t.token) for i, t in enumerate(self.admin.tokens)]
        if self.client_auth.mode == "jwt":  # HS256 keys are shared secrets; PEM keys public
            out += [
                (f"client_auth.keys.{kid}", key)
                for kid, key in self.client_auth.keys.items()
                if not key.lstrip().startswith("-----BEGIN")
            ]
        return out

    def exposed(self) -> list[tuple[str, str]]:
        """The listeners others could reach (not on loopback)."""
        return [(path, host) for path, host in self.listeners() if not _is_loopback(host)]

    def check(self, path: str) -> list[str]:
        problems = []
        host = self.scheduler.host
        if not self.admin.tokens and not _is_loopback(host):
            problems.append(
                f"admin.tokens: required when scheduler.host ({host}) is not a loopback address"
            )
        exposed = self.exposed()
        if exposed:
            # Built-in and placeholder secrets are for a cluster on one machine only.
            where = f"{exposed[0][0]} is {exposed[0][1]}, not loopback"
            for key, secret in self.secrets():
                if secret == BUILT_IN_CLIENT_KEY:
                    continue  # told below, with what to do instead
                why = weakness(secret) if isinstance(secret, str) else None
                if why is not None:
                    problems.append(f"{key}: {why} ({where})")
        if self.admin.metrics == "viewer" and not self.admin.tokens:
            problems.append(
                "admin.metrics: viewer needs admin.tokens (with none, every caller is an operator)"
            )
        auth = self.client_auth
        if not _is_loopback(host):
            if auth.mode == "trust":
                problems.append(
                    f"client_auth.mode: trust (uid= taken as given) only when scheduler.host "
                    f"is a loopback address, not {host}"
                )
            elif auth.mode == "jwt" and BUILT_IN_CLIENT_KEY in auth.keys.values():
                problems.append(
                    f"client_auth.keys: the built-in development key is public; set keys "
                    f"of your own (or a jwks_url) when scheduler.host ({host}) is not loopback"
                )
        known = set(self.regions.known or ())
        for i, node in enumerate(self.registry.static_nodes or ()):
            if node.region and node.region not in known:
                problems.append(
                    f"registry.static_nodes[{i}].region: unknown region {node.region!r}"
                )
        for i, anode in enumerate(self.access.nodes or ()):
            if anode.region and anode.region not in known:
                problems.append(f"access.nodes[{i}].region: unknown region {anode.region!r}")
        for i, rel in enumerate(self.gray.releases or ()):
            for j, region in enumerate(rel.include.regions):
                if region not in known:
                    problems.append(
                        f"gray.releases[{i}].include.regions[{j}]: unknown region {region!r}"
                    )
        return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):  # the raw text, for the type check to name
            value = raw
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                break
        else:
            node[keys[-1]] = value
            origins[".".join(keys)] = name
    return tree, origins


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_settings(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from already-parsed data plus ``env``; raise ConfigError with all."""
    if data is None:
        data = {}
    overrides, origins = _env_overrides(env or {})
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}: the top level must be a mapping, got {type(data).__name__}"])
    merged = _merge(dict(data), overrides)
    raw: list[str] = []
    settings = build(Settings, merged, "", raw)
    for problem in raw:
        key = problem.split(":", 1)[0]
        origin = next(
            (var for path, var in origins.items() if key == path or key.startswith(path + ".")),
            None,
        )
        problems.append(f"{origin} (environment): {problem}" if origin else f"{source}: {problem}")
    if problems:
        raise ConfigError(problems)
    return settings


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key a mapping repeats: PyYAML keeps the last
    silently, and a config edited by two people would lose one edit without a word."""

    def __init__(self, stream: str, pick: int | None = None) -> None:
        super().__init__(stream)
        self.repeats: list[tuple[int, int, str, int]] = []  # line, column, key, first line
        # None: the last of a repeated key wins (as PyYAML reads it); n: its n-th (0-based,
        # or the last when it has fewer) wins, so the values it hides get checked too.
        self.pick = pick
        self.most = 1  # the most times one key is given in one mapping

    @classmethod
    def read(
        cls, text: str, pick: int | None = None
    ) -> tuple[Any, list[tuple[int, int, str, int]]]:
        """The document, and every repeated key in file order."""
        loader = cls(text, pick)
        try:
            return loader.get_single_data(), sorted(loader.repeats)
        finally:
            loader.dispose()

    @classmethod
    def hidden(cls, text: str) -> list[Any]:
        """The document once for each value a repeated key hides: the n-th of every
        repeated key wins in the n-th one."""
        loader = cls(text)
        try:
            loader.get_single_data()
            most = loader.most
        finally:
            loader.dispose()
        return [cls.read(text, pick)[0] for pick in range(most - 1)]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[str, str], int] = {}
        given: dict[tuple[str, str], list[int]] = {}
        for i, (key, _) in enumerate(node.value):
            # A merge key (<<) is meant to be overridden; anything else is a slip.
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            mark = key.start_mark
            given.setdefault((key.tag, key.value), []).append(i)
            if (key.tag, key.value) in first:
                self.repeats.append(
                    (mark.line + 1, mark.column + 1, key.value, first[(key.tag, key.value)])
                )
            else:
                first[(key.tag, key.value)] = mark.line + 1
        self.most = max(self.most, *(len(at) for at in given.values()), 1)
        if self.pick is not None and any(len(at) > 1 for at in given.values()):
            dropped = {
                i
                for at in given.values()
                if len(at) > 1
                for i in at
                if i != at[min(self.pick, len(at) - 1)]
            }
            node.value = [pair for i, pair in enumerate(node.value) if i not in dropped]
        return super().construct_mapping(node, deep)


def load_settings(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (None: defaults only) and the ``IMCTL_`` environment."""
    env = os.environ if env is None else env
    if path is None:
        return parse_settings({}, "<defaults>", env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read: {exc}"]) from None
    try:
        data, repeated = _Loader.read(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{p}: {where}not valid YAML ({what})"]) from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise ConfigError([f"{p}: not valid YAML (nested too deeply)"]) from None
    repeats = [
        f"{p}: line {line}, column {column}: key {key!r} given twice (first at line {first})"
        for line, column, key, first in repeated
    ]
    problems = list(repeats)
    settings: Settings | None = None
    # What the file means (the last of a repeated key wins), then every value a repeated
    # key hides: a bad one is reported with the repeat, not after the repeat is fixed.
    documents = [data, *(_Loader.hidden(text) if repeats else [])]
    for i, document in enumerate(documents):
        try:
            built = parse_settings(document, str(p), env)
        except ConfigError as exc:
            problems += [problem for problem in exc.problems if problem not in problems]
        else:
            settings = built if i == 0 else settings
    if problems or settings is None:
        raise ConfigError(problems)
    return settings
