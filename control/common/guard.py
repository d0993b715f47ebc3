"""Connections that are not (yet) sessions: capped, timed out, and quiet in the log.

Every process listens through :func:`listen`, whose connections are aiohttp's own
``RequestHandler`` with four hooks (:class:`Connection`):

- at ``connection_made`` the :class:`ConnectionGuard` admits it or not: at most
  ``max_pending`` connections of the process, and ``max_pending_per_address`` of one client
  address (IPv4, or IPv6 /64), that are not WebSocket sessions; past either a new
  connection gets a canned JSON 503 and is closed before aiohttp parses a byte;
- the WebSocket upgrade (aiohttp's ``set_parser``) and ``connection_lost`` release it;
- aiohttp's ``keepalive_timeout`` (armed at ``connection_made``, and again after each answer,
  and not pushed back by bytes that do not complete a request head) closes a connection
  that has not sent a whole request head in ``idle_timeout_s``: slow headers, idle
  keep-alive and connections that never ask for anything;
- ``handle_error`` — the 400s aiohttp's parser answers before any handler runs (a bad
  request line, bad headers) — answers in the JSON error shape of every process, without
  echoing the request, counted in a metric and logged once per interval per kind.

The event loop's exception handler (:func:`install_loop_handler`) does the same for a
failing ``accept()`` (descriptors exhausted): asyncio logs each failure with a traceback,
up to ``backlog`` times per wakeup, and stops accepting for a second (its own retry delay).

An HTTP error that a handler did not answer itself (aiohttp's 404 for a target no route
matches, like ``OPTIONS *``) goes out in the same JSON shape (``finish_response``).

Everything here relies on aiohttp's public surface only (``RequestHandler``'s constructor
and its ``connection_made``, ``connection_lost``, ``set_parser``, ``finish_response`` and
``handle_error``;
``BaseSite``; ``BaseRunner.server``); tests/unit/test_guard.py fails if it changes.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, cast

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from control.common.ops import json_error
from control.common.ratelimit import client_key

log = logging.getLogger("imctl.connections")

# asyncio's own wording for a failed accept (selector_events.py); the errno check below
# catches the same failure should the wording change.
ACCEPT_FAILED = "socket.accept() out of system resource"
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# aiohttp's parser errors, by class: a metric label and a message that names what was
# wrong without repeating the request (which may be anything, and is the sender's).
MALFORMED: dict[type[BaseException], tuple[str, str]] = {
    http_exceptions.BadHttpMethod: ("bad_method", "not an HTTP request method"),
    http_exceptions.BadStatusLine: ("bad_request_line", "malformed request line"),
    http_exceptions.LineTooLong: ("too_long", "a request line or header is too long"),
    http_exceptions.InvalidURLError: ("bad_target", "malformed request target"),
    http_exceptions.InvalidHeader: ("bad_header", "malformed header"),
    http_exceptions.TransferEncodingError: ("bad_body", "malformed chunked body"),
    http_exceptions.ContentLengthError: ("bad_body", "body shorter than its length"),
    http_exceptions.BadHttpMessage: ("malformed", "malformed request"),
}


def _refusal_bytes() -> bytes:
    body = json.dumps(
        {
            "error": "too_many_connections",
            "message": "too many open connections from this address or to this process",
            "retry_after": 1,
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSED = _refusal_bytes()


def admission(total: int, from_address: int, max_total: int, max_per_address: int) -> str | None:
    """Why a new connection is refused (a metric label), or None to admit it."""
    if from_address >= max_per_address:
        return "per_address"
    if total >= max_total:
        return "per_process"
    return None


def malformed_kind(status: int, exc: BaseException | None) -> tuple[str, str, str]:
    """(error code, metric kind, message) for an answer aiohttp makes without a handler."""
    if status >= 500:
        if status == 504:
            return "timeout", "timeout", "the request took too long"
        return "internal", "internal", "internal error; see the process log"
    for cls in type(exc).__mro__ if exc is not None else ():
        if cls in MALFORMED:
            kind, message = MALFORMED[cls]
            return "bad_request", kind, message
    return "bad_request", "malformed", "malformed request"


class RateLimitedLog:
    """One line per kind per interval: the first at once, later ones counted and named in
    the next line of that kind (the metrics count every one)."""

    def __init__(
        self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._kinds: dict[str, list[float]] = {}  # kind -> [last logged at, held back since]

    def event(self, kind: str, message: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``message % args`` unless this kind was logged within the interval; True
        when it was logged."""
        now = self.clock()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.interval_s:
            state[1] += 1
            return False
        held = int(state[1]) if state is not None else 0
        if held:
            message += f" (and {held} more in the last {self.interval_s:g}s)"
        self._kinds[kind] = [now, 0]
        self.logger.warning(message, *args, exc_info=exc_info)
        return True


@dataclass(frozen=True)
class GuardLimits:
    idle_timeout_s: float = 5.0
    max_pending: int = 4096
    max_pending_per_address: int = 256
    log_interval_s: float = 10.0


class ConnectionGuard:
    """The process's count of connections that are not sessions, per client address, and
    its metrics. One per process: ``imctl up``'s parts share it."""

    def __init__(self, limits: GuardLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.log = RateLimitedLog(log, limits.log_interval_s, clock)
        self.pending = 0
        self.by_address: dict[str, int] = {}  # only addresses with a pending connection
        self.refused: dict[str, int] = {}
        self.malformed: dict[str, int] = {}
        self.accept_errors = 0
        self.proxy_refusals: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        held = self.by_address.get(address, 0)
        limits = self.limits
        why = admission(self.pending, held, limits.max_pending, limits.max_pending_per_address)
        if why is not None:
            self.refused[why] = self.refused.get(why, 0) + 1
            self.log.event(
                f"refused:{why}",
                "refusing new connections (%s cap: %d pending, %d from %s)",
                why.replace("_", " "),
                self.pending,
                held,
                address,
            )
            return False
        self.pending += 1
        self.by_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        self.pending -= 1
        held = self.by_address.get(address, 0) - 1
        if held > 0:
            self.by_address[address] = held
        else:
            self.by_address.pop(address, None)

    def bad_request(self, kind: str, address: str | None, exc: BaseException | None) -> None:
        self.malformed[kind] = self.malformed.get(kind, 0) + 1
        if kind in ("internal", "timeout"):  # not the client's doing: keep the traceback
            self.log.event(f"error:{kind}", "unhandled error answering %s", address, exc_info=exc)
        else:
            self.log.event(
                f"malformed:{kind}", "malformed HTTP request (%s) from %s", kind, address
            )

    def proxy_refused(self, reason: str, address: str, detail: str) -> None:
        """A balancer's connection closed before it was one (common/proxied.py)."""
        self.proxy_refusals[reason] = self.proxy_refusals.get(reason, 0) + 1
        self.log.event(f"proxy:{reason}", "refused a relayed connection (%s) %s", reason, detail)

    def accept_failed(self, exc: BaseException | None) -> None:
        self.accept_errors += 1
        self.log.event(
            "accept",
            "accept() is failing (%s): no descriptors left for new connections; asyncio "
            "stops accepting for a second at a time",
            exc if exc is not None else "out of resources",
        )

    # Prometheus collector: read at scrape time, on the loop that updates it.
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "imctl_connections_pending",
            "Open connections that are not WebSocket sessions",
            value=self.pending,
        )
        refused = CounterMetricFamily(
            "imctl_connections_refused", "Connections refused at accept, by cap", labels=["cap"]
        )
        for why, n in self.refused.items():
            refused.add_metric([why], n)
        yield refused
        malformed = CounterMetricFamily(
            "imctl_http_errors",
            "Requests answered without a handler (malformed requests, by kind)",
            labels=["kind"],
        )
        for kind, n in self.malformed.items():
            malformed.add_metric([kind], n)
        yield malformed
        proxy = CounterMetricFamily(
            "imctl_proxy_refused",
            "Connections to the PROXY v2 listener closed before their header was taken, by "
            "reason (not_balancer, missing, malformed, truncated, timeout, tls, reset)",
            labels=["reason"],
        )
        for reason, n in self.proxy_refusals.items():
            proxy.add_metric([reason], n)
        yield proxy
        yield CounterMetricFamily(
            "imctl_accept_errors", "accept() failures (descriptors exhausted)", self.accept_errors
        )

    def register(self, registry: CollectorRegistry) -> None:
        try:
            registry.register(self)
        except ValueError:  # already there (two parts sharing a registry)
            pass


def _peer_key(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return client_key(peer[0] if isinstance(peer, tuple) and peer else None)


class Connection(RequestHandler):
    """aiohttp's connection with the guard's hooks; two slots more per connection, and no
    other object (idle WebSockets are counted in bytes)."""

    __slots__ = ("_address", "_guard")

    def __init__(self, guard: ConnectionGuard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address: str | None = None  # set while the connection counts as pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = _peer_key(transport)
        if not self._guard.admit(address):
            # Before aiohttp sees it: no parser runs and no handler task is made.
            cast(asyncio.Transport, transport).write(REFUSED)
            transport.close()
            return
        self._address = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.settle()
        super().connection_lost(exc)

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        # aiohttp hands an upgraded connection its WebSocket reader here: a session now.
        super().set_parser(parser, data_received_cb)
        self.settle()

    def settle(self) -> None:
        address = self._address
        if address is not None:
            self._address = None
            self._guard.release(address)

    @property
    def pending_address(self) -> str | None:
        """The client address key while this connection is not a session."""
        return self._address

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = _json_http_exception(resp)
        return await super().finish_response(request, resp, start_time)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code, kind, text = malformed_kind(status, exc)
        self._guard.bad_request(kind, self._address or _peer_key_of(request), exc)
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, cut it off
            raise ConnectionError("an answer was already being sent")
        response = json_error(status, code, text)
        response.force_close()
        return response


def _json_http_exception(exc: web.HTTPException) -> web.Response:
    """An aiohttp HTTP error that reached the protocol as plain text (a request target
    no route can match, such as ``OPTIONS *``), as the same JSON error."""
    response = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    for name in ("Allow", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


def _peer_key_of(request: web.BaseRequest) -> str:
    transport = request.transport
    return _peer_key(transport) if transport is not None else "unknown"


def client_address(request: web.BaseRequest) -> str:
    """The request's client address key (IPv4, or IPv6 /64) from its connection, without
    caching anything on the request (a WebSocket's request lives as long as it does)."""
    protocol = request.protocol
    if isinstance(protocol, Connection) and protocol.pending_address is not None:
        return protocol.pending_address
    return _peer_key_of(request)


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with guarded connections: the runner stops it with its other sites."""

    __slots__ = ("_guard", "_host", "_listening", "_owner", "_port", "_ssl")

    def __init__(
        self,
        runner: web.BaseRunner,
        guard: ConnectionGuard,
        host: str,
        port: int,
        backlog: int = 4096,
        ssl: SSLContext | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._owner = runner
        self._ssl = ssl  # HTTPS/WSS; its certificate may be reloaded in place (common/tls.py)
        self._guard = guard
        self._host = host
        self._port = port
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._owner.server
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        guard = self._guard
        idle = guard.limits.idle_timeout_s

        def connection() -> Connection:
            return Connection(guard, server, loop=loop, keepalive_timeout=idle, access_log=None)

        self._listening = await loop.create_server(
            self.protocol(connection),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            ssl=self._ssl,
            # The guard's deadline starts once the handshake is done: a peer that never
            # finishes one (or speaks plain HTTP) must not hold its socket for asyncio's 60 s.
            ssl_handshake_timeout=idle if self._ssl is not None else None,
        )

    def protocol(self, connection: Callable[[], Connection]) -> Callable[[], asyncio.Protocol]:
        """What each accepted connection starts as (common/proxied.py reads a header first)."""
        return connection

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.close()
            self._listening = None
        await super().stop()


LoopHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def install_loop_handler(
    loop: asyncio.AbstractEventLoop, guard: ConnectionGuard
) -> Callable[[], None]:
    """Route a failing ``accept()`` to the guard (counted, logged once per interval);
    everything else to the handler that was there. Returns the undo."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ACCEPT_FAILED or (
            isinstance(exc, OSError)
            and exc.errno in RESOURCE_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            guard.accept_failed(exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)

    def undo() -> None:
        loop.set_exception_handler(previous)

    return undo
