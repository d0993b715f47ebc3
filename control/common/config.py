"""Configuration sections every layer shares: the cluster and its key-value store, the node
registry, heartbeat and reconnect timing, tickets, listeners, admin tokens, client
authentication. Frozen, validated by common/schema.py; the aggregate is control/settings.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from control.common.auth import Grant, TokenTable
from control.common.client_auth import VerifyKey, parse_key
from control.common.guard import GuardLimits
from control.common.registry import NodeRecord, PreservationPolicy
from control.common.schema import register_converter, setting
from control.common.tickets import TicketKeys
from control.common.tls import CertificateError, client_context, server_context

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

    @property
    def pending_window_s(self) -> float:
        """How long the scheduler counts its own assignments to a node: nodes report at
        least every TTL/3, so a count older than a TTL is surely in a report."""
        return float(self.lease_ttl_s)

    @property
    def reconcile_s(self) -> float:
        """How often the controller checks presence against the registry: once a lease
        TTL, the time a dead node's record takes to vanish."""
        return float(self.lease_ttl_s)

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

    @property
    def sweep_s(self) -> float:
        """How often whatever looks for missed heartbeats looks (the controller's expiry
        sweep, an access node's idle check): at most half an interval late, and at least
        every 5 s."""
        return min(self.interval_s / 2, 5.0)


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
class TlsSettings:
    """A listener's certificate: HTTPS and WSS when given, plain HTTP when not."""

    cert: str = setting(
        "", "PEM certificate chain file, leaf first (empty: plain HTTP)", max_len=4096
    )
    key: str = setting("", "PEM private key file of that certificate", max_len=4096)
    ca: str = setting(
        "",
        "CA file this process trusts when it calls its peers' https listeners (a private "
        "CA; empty: the system's trust store)",
        max_len=4096,
    )
    reload_s: float = setting(
        30.0, "look for renewed certificate files this often (served without a restart)", gt=0
    )

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    def check(self, path: str) -> list[str]:
        if bool(self.cert) != bool(self.key):
            given, missing = ("cert", "key") if self.cert else ("key", "cert")
            return [f"{path}.{missing}: required with {path}.{given}"]
        problems = []
        if self.enabled:
            try:
                server_context(self.cert, self.key)
            except CertificateError as exc:
                problems.append(f"{path}: {exc}")
        if self.ca:
            try:
                client_context(self.ca)
            except CertificateError as exc:
                problems.append(f"{path}.ca: {exc}")
        return problems


# A web origin as browsers send it: scheme, host, optional port; no path, no slash.
ORIGIN_PATTERN = (
    r"https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?"
)


@dataclass(frozen=True)
class CorsSettings:
    """Web pages that may use the cluster: CORS answers on /v1/endpoint, and the access
    nodes' WebSocket Origin check, from one list."""

    origins: tuple[str, ...] = setting(
        (),
        "origins (scheme://host[:port], as browsers send them) whose pages may ask "
        "/v1/endpoint and open WebSockets to the access nodes; empty: no CORS answers, and "
        "the nodes do not check Origin",
    )
    max_age_s: int = setting(600, "how long a browser may reuse a preflight answer", ge=0, le=86400)

    def check(self, path: str) -> list[str]:
        problems = []
        for i, origin in enumerate(self.origins):
            if not re.fullmatch(ORIGIN_PATTERN, origin):
                problems.append(
                    f"{path}.origins[{i}]: {origin!r} is not an origin like "
                    "https://app.example.com or http://127.0.0.1:8000 (lower case, no path, "
                    "no trailing slash; '*' is not taken: list the origins)"
                )
        return problems


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


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
