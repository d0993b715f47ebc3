"""Connections relayed by a load balancer with a PROXY v2 header (HAProxy ``send-proxy-v2``).

A :class:`ProxiedSite` listens for the balancer only: a connection from any other peer is
closed at once; from a balancer, the header is read first, off the socket and exactly its
own bytes (so the bytes after it stay in the kernel for whatever reads next: aiohttp, or
TLS started on the transport with ``loop.start_tls`` when the balancer passes TLS
through). A header that is missing, malformed, truncated or slower than the deadline: the
connection is closed, counted (``imctl_proxy_refused{reason}``) and logged once per
interval. Then the connection becomes the guard's ordinary :class:`Connection`, on a
transport whose ``peername`` is the client's address from the header: ``request.remote``,
the per-address caps and handshake budgets, logs and presence all see the client.

The header is read with our own reader on a duplicate of the socket's descriptor while the
transport is paused (asyncio does not let a second reader on a transport's descriptor),
a few bytes at a time and never past the header: a slow sender costs a wakeup per
segment, not a spin.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from control.common.guard import Connection, ConnectionGuard, GuardedSite
from control.common.proxyproto import PREFIX_LEN, ProxyHeaderError, header_length, parse
from control.common.ratelimit import client_key

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyPolicy:
    """Who may relay connections, and how long its header may take."""

    balancers: tuple[Network, ...]
    header_timeout_s: float = 5.0
    #: TLS started after the header (the balancer passes TLS through); None: plain
    ssl: ssl.SSLContext | None = None
    #: False when the balancer terminates TLS itself (edge.tls: terminate): what it relays
    #: is plain even to a node that has a certificate for its own listener
    passthrough: bool = True

    def is_balancer(self, host: str | None) -> bool:
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)  # a dual-stack socket's IPv4 peer
        address = mapped or address
        return any(address in net for net in self.balancers)


class ClientTransport(asyncio.Transport):
    """The balancer's transport as the client's: ``peername`` is the address the header
    named; everything else is the real transport's."""

    __slots__ = ("_peer", "_real")

    def __init__(self, real: asyncio.Transport, peer: tuple[str, int]) -> None:
        super().__init__()
        self._real = real
        self._peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._real.get_extra_info(name, default)

    def write(self, data: Any) -> None:
        self._real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._real.writelines(list_of_data)

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def close(self) -> None:
        self._real.close()

    def abort(self) -> None:
        self._real.abort()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def write_eof(self) -> None:
        self._real.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._real.get_protocol()


class HeaderReader(asyncio.Protocol):
    """One relayed connection until its header is read; then it hands over."""

    def __init__(
        self, policy: ProxyPolicy, guard: ConnectionGuard, connection: Callable[[], Connection]
    ) -> None:
        self.policy = policy
        self.guard = guard
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.balancer = ""  # the balancer's address key while it counts as pending
        self.buffer = b""
        self.sock: socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.early: list[bytes] = []  # data TLS delivered before the hand-over
        self.tls: asyncio.Future[None] | None = None  # the TLS handshake under way

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if not self.policy.is_balancer(host):
            self.refuse("not_balancer", f"from {host}, which is not a configured balancer")
            return
        key = client_key(host)
        if not self.guard.admit(key):
            t.close()
            return
        self.balancer = key
        t.pause_reading()  # until the header is off the socket
        raw = t.get_extra_info("socket")
        loop = asyncio.get_running_loop()
        try:
            self.sock = socket.socket(fileno=os.dup(raw.fileno()))
            self.sock.setblocking(False)
            loop.add_reader(self.sock.fileno(), self.readable)
        except OSError as exc:
            self.refuse("reset", f"could not read the header: {exc}")
            return
        self.timer = loop.call_later(self.policy.header_timeout_s, self.expired)

    def readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        have = len(self.buffer)
        try:
            need = header_length(self.buffer)
        except ProxyHeaderError:  # cannot happen: checked as it came
            need = None
        want = (PREFIX_LEN if need is None else need) - have
        try:
            chunk = sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.refuse("reset", f"connection failed during the header: {exc.strerror}")
            return
        if not chunk:
            self.refuse("truncated", "closed before the whole PROXY header came")
            return
        self.buffer += chunk
        try:
            length = header_length(self.buffer)
        except ProxyHeaderError as exc:
            missing = self.buffer[:1] != b"\r"
            self.refuse("missing" if missing else "malformed", str(exc))
            return
        if length is None or len(self.buffer) < length:
            return
        try:
            header = parse(self.buffer)
        except ProxyHeaderError as exc:
            self.refuse("malformed", str(exc))
            return
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if header.source is not None:
            source = header.source
        else:  # LOCAL (the balancer's own check) or an unknown family: the balancer's
            source = (peer[0], peer[1]) if isinstance(peer, tuple) and peer else ("unknown", 0)
        self._stop_reading()
        if self.policy.ssl is None:
            self.hand_over(cast(asyncio.Transport, self.transport), source)
        else:
            self.tls = asyncio.ensure_future(self.start_tls(source))

    def expired(self) -> None:
        self.timer = None
        self.refuse("timeout", f"no whole PROXY header in {self.policy.header_timeout_s:g}s")

    async def start_tls(self, source: tuple[str, int]) -> None:
        transport = self.transport
        assert transport is not None and self.policy.ssl is not None
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                self.policy.ssl,
                server_side=True,
                ssl_handshake_timeout=self.policy.header_timeout_s,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.guard.proxy_refused("tls", self.balancer or "?", f"TLS failed: {exc}")
            self._release()
            transport.close()
            return
        if tls is None:
            self._release()
            transport.close()
            return
        self.hand_over(tls, source)

    def hand_over(self, transport: asyncio.Transport, source: tuple[str, int]) -> None:
        self._release()
        connection = self.connection()
        transport.set_protocol(connection)
        connection.connection_made(ClientTransport(transport, source))
        for data in self.early:
            connection.data_received(data)
        self.early.clear()
        if not transport.is_closing():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.early.append(data)  # only TLS delivers here, between handshake and hand-over

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_reading()
        self._release()

    def refuse(self, reason: str, detail: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        host = peer[0] if isinstance(peer, tuple) and peer else "?"
        self.guard.proxy_refused(reason, host, detail)
        self._stop_reading()
        self._release()
        if self.transport is not None:
            self.transport.close()

    def _stop_reading(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock, self.sock = self.sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _release(self) -> None:
        if self.balancer:
            self.guard.release(self.balancer)
            self.balancer = ""


class ProxiedSite(GuardedSite):
    """A :class:`GuardedSite` for the balancer: each connection starts with a PROXY v2
    header (:class:`HeaderReader`)."""

    __slots__ = ("_policy",)

    def __init__(
        self,
        runner: Any,
        guard: ConnectionGuard,
        host: str,
        port: int,
        policy: ProxyPolicy,
        backlog: int = 4096,
    ) -> None:
        super().__init__(runner, guard, host, port, backlog=backlog)
        self._policy = policy

    @property
    def name(self) -> str:
        return f"proxy-v2://{self._host}:{self._port}"

    def protocol(self, connection: Callable[[], Connection]) -> Callable[[], asyncio.Protocol]:
        policy, guard = self._policy, self._guard

        def reader() -> HeaderReader:
            return HeaderReader(policy, guard, connection)

        return reader
