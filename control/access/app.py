"""The access node's aiohttp edge: ``create_app``, and ``/ws`` (the WebSocket handshake with
its admission checks, then the frame loop of one connection)."""

from __future__ import annotations

import itertools
import secrets
import sys
import time
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import WSMsgType, web

from control.access import protocol
from control.access.internal import BODY_MAX
from control.access.node import AccessNode
from control.api import access_document, add_frame_schema, add_openapi
from control.common.errors import TicketError
from control.common.guard import client_address
from control.common.ops import add_json_fallbacks, add_ops_routes, json_error, lifecycle
from control.common.ratelimit import TokenBuckets
from control.gray.model import Version

# Frames that spend the connection's frame budget and count as signs of life.
_METERED = frozenset({WSMsgType.TEXT, WSMsgType.PING, WSMsgType.PONG})


def query_params(query_string: str) -> dict[str, str]:
    """The few parameters /ws takes, without building (and caching on the request) a
    MultiDict that every idle connection would keep."""
    out: dict[str, str] = {}
    for part in query_string.split("&"):
        name, _, value = part.partition("=")
        if name in ("ticket", "platform", "version") and name not in out:
            out[name] = unquote_plus(value)
    return out


_VERSIONS: dict[str, Version | None] = {}  # clients run a few hundred app versions at most


def app_version(raw: str) -> Version | None:
    """The client's app version (``?version=``, as it gave the scheduler), for following
    releases; None when missing or malformed: such a session moves only on a rollback."""
    if raw in _VERSIONS:
        return _VERSIONS[raw]
    try:
        version: Version | None = Version.parse(raw)
    except ValueError:
        version = None
    if len(_VERSIONS) >= 4096:
        _VERSIONS.clear()
    _VERSIONS[raw] = version
    return version


def close_reason(code: int | None) -> str:
    """What a close code means, as the closes metric counts it."""
    return {
        protocol.CLOSE_IDLE: "idle",
        protocol.CLOSE_KICKED: "kicked",
        protocol.CLOSE_RECONNECT: "reconnect",
        protocol.CLOSE_POLICY: "abuse",
        protocol.CLOSE_GOING_AWAY: "shutdown",
        1009: "too_large",
    }.get(code or 0, "closed")


class WebSocketEndpoint:
    """``GET /ws``: admits a client (ticket, upgrade, handshake rates, drain, capacity),
    then runs its connection's frame loop until it closes."""

    def __init__(self, node: AccessNode) -> None:
        self.node = node
        access = node.access
        self.keys = node.config.ticket_keys
        self.gate = TokenBuckets(access.handshake_rate_per_s, access.handshake_burst, 1, node.clock)
        self.address_gate = TokenBuckets(
            access.handshake_rate_per_address_per_s,
            access.handshake_burst_per_address,
            access.handshake_addresses,
            node.clock,
        )
        self.handshaking = 0
        # Interned once: every session of a platform shares the one string.
        self.platforms = {p: sys.intern(p) for p in (*access.platforms, "other")}
        self.frame_rate = access.frame_rate_per_s
        self.frame_burst = access.frame_burst
        self.flood_error = protocol.FrameError(
            "rate_limited", f"more than {self.frame_rate:g} frames per second; slow down"
        )
        self._seq = itertools.count(1)
        self._tag = f"{node.epoch:x}{secrets.token_hex(2)}"
        # The web pages that may connect (cors.origins); empty: Origin is not checked.
        self.origins = frozenset(node.config.cors.origins)

    def _refuse(
        self, result: str, status: int, code: str, message: str, **extra: Any
    ) -> web.Response:
        """A handshake refused before the upgrade: counted, answered, connection closed."""
        self.node.metrics.handshake(result)
        response = json_error(status, code, message, **extra)
        response.force_close()
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Cheapest first, and the node-wide budget last: a request refused for its own
        # sake (no ticket, no upgrade, its address over its share) costs no other client
        # its turn. Every refusal closes the connection: a pipelined flood pays for a new
        # connection per answer, and those are capped per address (common/guard.py).
        node = self.node
        if self.origins:
            # A browser always names its page's origin; native apps send none and pass.
            origin = request.headers.get("Origin")
            if origin is not None and origin not in self.origins:
                return self._refuse(
                    "bad_origin",
                    403,
                    "forbidden_origin",
                    "pages of this origin may not connect (not in cors.origins)",
                )
        params = query_params(request.query_string)
        try:
            ticket = self.keys.verify(params.get("ticket", ""), node.id, time.time())
        except TicketError as exc:
            return self._refuse("bad_ticket", 401, "bad_ticket", exc.reason)
        # No per-message deflate: IM frames are small, and a zlib context per connection
        # costs memory and CPU; it also lets one pushed frame be written to many sockets.
        ws = web.WebSocketResponse(
            heartbeat=None,
            # Off: aiohttp would answer PINGs before the frame loop sees them, and a client
            # keeping the connection alive with protocol pings would be closed as idle.
            autoping=False,
            max_msg_size=node.access.max_frame_bytes * 4,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            return self._refuse(
                "not_websocket", 400, "not_websocket", "expected a WebSocket upgrade"
            )
        if self.address_gate.allow(client_address(request)) > 0:
            return self._refuse(
                "address_rate_limited",
                429,
                "rate_limited",
                "too many handshakes from this address",
                retry_after=1,
            )
        if self.gate.allow("handshakes") > 0:
            return self._refuse(
                "rate_limited", 429, "rate_limited", "too many handshakes", retry_after=1
            )
        if node.state != "up":
            return self._refuse(
                "draining",
                503,
                "draining",
                "this node is draining; ask the scheduler again",
                retry_after=1,
            )
        if len(node.sessions) + self.handshaking >= node.cfg.capacity:
            return self._refuse("full", 503, "full", "this node is at capacity", retry_after=1)
        self.handshaking += 1
        try:
            await ws.prepare(request)
        finally:
            self.handshaking -= 1
        # Unique across nodes and restarts: a collision would let one login pass for another.
        conn = f"{node.id}.{self._tag}.{next(self._seq)}"
        platform = params.get("platform", "")
        if platform:
            # Client-chosen: only known names become counters and metric labels.
            platform = self.platforms.get(platform, "other")
        version = app_version(params.get("version", ""))
        del params  # not kept alive by this frame for the connection's lifetime
        session = node.new_session(
            ws, request.transport, conn, ticket.uid, ticket.device, platform, version
        )
        del ticket  # this frame lives as long as the connection: keep it small
        reason = "closed"
        try:
            if not await node.open(session):
                reason = "presence_unavailable"
                return ws
            node.metrics.handshake("ok")
            # The frame loop lives here, not in a helper: one coroutine frame per idle
            # connection instead of two (serve's exists only while a frame is served).
            rate, burst, clock = self.frame_rate, self.frame_burst, node.clock
            abuse_limit = node.access.abuse_limit
            async for msg in ws:
                error: protocol.FrameError | None = None
                if msg.type in _METERED:
                    now = clock()
                    tokens = min(burst, session.tokens + (now - session.last_seen) * rate)
                    session.last_seen = now
                    if tokens < 1.0:
                        # Refused unread: a client in a send loop must not take the event
                        # loop from everyone else on this node.
                        session.tokens = tokens
                        error = self.flood_error
                    else:
                        session.tokens = tokens - 1.0
                        if msg.type == WSMsgType.TEXT:
                            error = await node.serve(session, msg.data)
                        else:
                            await node.protocol_ping(session, msg.type, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    error = protocol.FrameError("binary", "frames are JSON text, not binary")
                elif msg.type == WSMsgType.ERROR:
                    break
                if error is not None:
                    await node.strike(session, error)
                    if session.strikes >= abuse_limit:
                        await session.close(protocol.CLOSE_POLICY, "too many bad frames")
                        break
            if session.cut_off:
                reason = "slow_consumer"
            else:
                reason = (
                    "idle" if ws.close_code == protocol.CLOSE_IDLE else close_reason(ws.close_code)
                )
        finally:
            await node.close(session, reason)
        return ws


NODE = web.AppKey("node", AccessNode)
INTERNAL_BODY_MAX = BODY_MAX


def create_app(node: AccessNode) -> web.Application:
    """The node's aiohttp app, on backends its caller (launch) opens and closes."""
    app = web.Application(client_max_size=BODY_MAX)
    app[NODE] = node
    websocket = WebSocketEndpoint(node)

    async def close_sessions(app: web.Application) -> None:
        # Before aiohttp waits for handlers: open WebSockets would hold shutdown up.
        await node.stop()

    app.cleanup_ctx.append(lifecycle(node))
    app.on_shutdown.append(close_sessions)
    app.router.add_get("/ws", websocket.handle, allow_head=False)
    node.internal.add_routes(app)
    add_openapi(app, access_document)
    add_frame_schema(app)
    add_ops_routes(
        app, node.supervisor, node.metrics.registry, node.readiness, node.config.metrics_readers
    )
    add_json_fallbacks(app)
    return app
