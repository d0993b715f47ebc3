"""The ``edge`` configuration section: HAProxy in front of the access nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from control.common.schema import setting

TlsMode = Literal["off", "passthrough", "terminate"]


@dataclass(frozen=True)
class EdgeSettings:
    """Each access node is reached at an address on the balancer, which the node advertises
    as its ``endpoint``: a port of ``first_port``-``last_port`` on ``public_host`` (tls off),
    or an SNI name on ``tls_port`` (passthrough: the nodes hold the certificate;
    terminate: HAProxy does). The balancer relays to the node's ``proxy_port`` with a PROXY
    v2 header."""

    bind: str = setting("127.0.0.1", "address HAProxy listens on", min_len=1)
    public_host: str = setting(
        "127.0.0.1", "host clients reach the balancer at (in node endpoints, tls off)", min_len=1
    )
    first_port: int = setting(20000, "lowest node port on the balancer (tls off)", ge=1, le=65535)
    last_port: int = setting(20999, "highest node port on the balancer (tls off)", ge=1, le=65535)
    tls: TlsMode = setting(
        "off",
        "off: a port per node; passthrough: one TLS port, routed by SNI to nodes that "
        "terminate TLS; terminate: HAProxy terminates TLS (certificate), nodes stay plain",
    )
    tls_port: int = setting(8443, "the TLS port (passthrough, terminate)", ge=1, le=65535)
    certificate: str = setting("", "PEM file with certificate and key (tls: terminate)")
    config_path: str = setting(
        "imctl-haproxy.cfg", "where `imctl lb watch` writes the configuration", min_len=1
    )
    master_socket: str = setting(
        "",
        "HAProxy's master CLI socket (haproxy -W -S PATH): `imctl lb watch` reloads through "
        "it; empty: it starts and owns an HAProxy of its own with a socket beside config_path",
    )
    haproxy: str = setting("haproxy", "the HAProxy binary", min_len=1)
    reload_interval_s: float = setting(
        2.0, "reload at most this often: changes in between are rendered together", gt=0, le=3600
    )
    hard_stop_after_s: int = setting(
        3600,
        "an old worker (one a reload replaced) keeps its connections this long, then closes "
        "them: clients reconnect through the new one (0: never)",
        ge=0,
    )
    maxconn: int = setting(
        0,
        "HAProxy's connection cap (0: HAProxy derives it from its descriptor limit; a cap "
        "the limit cannot hold makes HAProxy refuse the configuration)",
        ge=0,
    )

    def check(self, path: str) -> list[str]:
        problems = []
        if self.last_port < self.first_port:
            problems.append(f"{path}.last_port: below first_port ({self.first_port})")
        if self.tls == "terminate" and not self.certificate:
            problems.append(f"{path}.certificate: required with tls: terminate")
        for name in ("bind", "public_host", "certificate", "config_path", "master_socket"):
            value = getattr(self, name)
            if isinstance(value, str) and any(c.isspace() or c == "#" for c in value):
                problems.append(f"{path}.{name}: no spaces or '#' ({value!r})")
        return problems


@dataclass(frozen=True)
class EdgeConfig:
    """What rendering and watching take, built by launch from Settings."""

    edge: EdgeSettings
    prefix: str = "/imctl"
    #: a relayed connection silent this long is closed by HAProxy: the heartbeat timeout
    #: and one interval more (the node closes it first)
    idle_timeout_s: float = 120.0
    #: the balancer gives up connecting to a node after this long
    connect_timeout_s: float = 5.0
