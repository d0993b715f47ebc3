"""HAProxy's configuration from a frozen view of the node registry. Pure.

Each node that is up and has a PROXY v2 listener (``NodeRecord.proxy``) and whose
``endpoint`` names an address on this balancer gets a route: a frontend port (tls off) or
an SNI name (passthrough, terminate) -> a backend with the one server, ``send-proxy-v2``.
Draining and vanished nodes get none; a record whose fields would not be safe in the file
is skipped with a reason (records come from the registry: anything a writer put there).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from control.common.registry import NodeRecord
from control.edge.config import EdgeConfig

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_BACKEND = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):([0-9]{1,5})")


@dataclass(frozen=True, slots=True)
class EdgeView:
    """The registry as the renderer sees it: node records by id."""

    nodes: tuple[NodeRecord, ...]

    @classmethod
    def of(cls, records: Iterable[NodeRecord]) -> EdgeView:
        return cls(tuple(sorted(records, key=lambda r: r.id)))


class Route(NamedTuple):
    node: str
    public: str  # "port 20001" or "sni n1.example.com"
    backend: str  # host:port of the node's PROXY v2 listener


class Rendering(NamedTuple):
    text: str
    routes: tuple[Route, ...]
    skipped: tuple[tuple[str, str], ...]  # (node id, why), draining nodes included

    def summary(self) -> str:
        """One line for the log: what is routed, and what is not and why."""
        routed = ", ".join(f"{r.node} ({r.public})" for r in self.routes) or "no node"
        if not self.skipped:
            return f"routing {routed}"
        left = "; ".join(f"{n}: {why}" for n, why in self.skipped)
        return f"routing {routed}; not routed: {left}"


def _public(record: NodeRecord, config: EdgeConfig) -> tuple[str | None, str]:
    """The node's address on this balancer ("port N" / "sni NAME"), or None and why not."""
    edge = config.edge
    try:
        url = urlsplit(record.endpoint)
        port = url.port
    except ValueError:
        return None, "endpoint is not a URL"
    host = url.hostname or ""
    if edge.tls == "off":
        if url.scheme != "ws" or host != edge.public_host.lower() or port is None:
            return None, f"endpoint {record.endpoint!r} is not ws://{edge.public_host}:PORT"
        if not edge.first_port <= port <= edge.last_port:
            return None, f"port {port} outside {edge.first_port}-{edge.last_port}"
        return f"port {port}", ""
    if url.scheme != "wss" or (port or 443) != edge.tls_port:
        return None, f"endpoint {record.endpoint!r} is not wss://NAME:{edge.tls_port}"
    if not _HOSTNAME.fullmatch(host):
        return None, f"endpoint host {host!r} is not a DNS name"
    return f"sni {host}", ""


def routes(
    view: EdgeView, config: EdgeConfig
) -> tuple[tuple[Route, ...], tuple[tuple[str, str], ...]]:
    """Which nodes get which public address; the first (by id) of two claiming one wins."""
    taken: dict[str, str] = {}
    out: list[Route] = []
    skipped: list[tuple[str, str]] = []
    for record in view.nodes:
        if not _ID.fullmatch(record.id):
            skipped.append((record.id[:64].encode("unicode_escape").decode(), "unsafe node id"))
            continue
        if record.state != "up":
            skipped.append((record.id, record.state))
            continue
        if not record.proxy:
            skipped.append((record.id, "no proxy_port"))
            continue
        if (
            not _BACKEND.fullmatch(record.proxy)
            or not 0 < int(record.proxy.rsplit(":", 1)[1]) < 65536
        ):
            skipped.append((record.id, f"proxy address {record.proxy!r} is not host:port"))
            continue
        public, why = _public(record, config)
        if public is None:
            skipped.append((record.id, why))
            continue
        if public in taken:
            skipped.append((record.id, f"{public} is {taken[public]}'s"))
            continue
        taken[public] = record.id
        out.append(Route(record.id, public, record.proxy))
    return tuple(out), tuple(skipped)


def _seconds(value: float) -> str:
    return f"{max(1, round(value * 1000))}ms"


def render(view: EdgeView, config: EdgeConfig) -> Rendering:
    """The whole configuration file for ``view``: the same view, the same bytes."""
    edge = config.edge
    routed, skipped = routes(view, config)
    idle = _seconds(config.idle_timeout_s)
    lines = [
        f"# Written by imctl from the node registry at {config.prefix}: edits are overwritten.",
        "global",
    ]
    if edge.maxconn:
        lines.append(f"    maxconn {edge.maxconn}")
    if edge.hard_stop_after_s:
        lines.append(f"    hard-stop-after {edge.hard_stop_after_s}s")
    lines += [
        "",
        "defaults",
        "    mode tcp",
        f"    timeout connect {_seconds(config.connect_timeout_s)}",
        f"    timeout client {idle}",
        f"    timeout server {idle}",
        f"    timeout client-fin {_seconds(min(config.connect_timeout_s, 5.0))}",
        "",
    ]
    if edge.tls == "off":
        for r in routed:
            port = r.public.split()[1]
            lines += [
                f"frontend public_{r.node}",
                f"    bind {edge.bind}:{port}",
                f"    default_backend node_{r.node}",
                "",
            ]
    else:
        lines.append("frontend public_tls")
        if edge.tls == "terminate":
            lines.append(f"    bind {edge.bind}:{edge.tls_port} ssl crt {edge.certificate}")
            sni = "ssl_fc_sni"
        else:
            lines += [
                f"    bind {edge.bind}:{edge.tls_port}",
                f"    tcp-request inspect-delay {_seconds(config.connect_timeout_s)}",
                "    tcp-request content accept if { req.ssl_hello_type 1 }",
            ]
            sni = "req.ssl_sni"
        for r in routed:
            lines.append(f"    use_backend node_{r.node} if {{ {sni} -i {r.public.split()[1]} }}")
        lines.append("")
    for r in routed:
        lines += [f"backend node_{r.node}", f"    server {r.node} {r.backend} send-proxy-v2", ""]
    return Rendering("\n".join(lines), routed, skipped)
