"""The access node: WebSocket sessions, heartbeat batching, registration with load, drain,
kicks and the internal push endpoint. This module is the node's IO edge."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import WSMsgType, web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from control.access import protocol
from control.access.config import AccessNodeSettings
from control.access.core import CoreContext, MessageCore, load_core
from control.access.push import Pusher
from control.common.auth import bearer, same_secret
from control.common.errors import (
    BackendUnavailable,
    ImctlError,
    NotJson,
    TicketError,
    parse_json,
)
from control.common.guard import client_address
from control.common.kv import KeyValueStore
from control.common.metrics import LoopCounter
from control.common.mirror import PrefixMirror
from control.common.ops import (
    add_json_fallbacks,
    add_ops_routes,
    guarded,
    json_error,
    lifecycle,
)
from control.common.ratelimit import TokenBuckets
from control.common.registry import (
    DrainRequest,
    NodeRecord,
    Registration,
    Registry,
    drain_prefix,
)
from control.common.tasks import Supervisor, pause
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence
from control.settings import Settings

log = logging.getLogger(__name__)


class Session:
    """One client connection."""

    __slots__ = (
        "conn",
        "cut_off",
        "device",
        "last_seen",
        "node",
        "platform",
        "region",
        "strikes",
        "tokens",
        "transport",
        "uid",
        "ws",
    )

    def __init__(
        self,
        node: AccessNode,
        ws: web.WebSocketResponse,
        conn: str,
        uid: str,
        device: str,
        platform: str,
        region: str,
    ) -> None:
        self.node = node
        self.ws = ws
        self.conn = conn
        self.uid = uid
        self.device = device
        self.platform = platform
        self.region = region
        self.last_seen = time.monotonic()
        self.tokens = node.frame_burst  # the frame budget, refilled since last_seen
        self.strikes = 0
        self.cut_off = False
        self.transport = ws._writer.transport if ws._writer is not None else None

    def too_slow(self) -> bool:
        """True, and the connection cut, when the client has stopped reading: past the
        node's backlog limit its frames would pile up in this process's memory for as long
        as it keeps sending pings. It reconnects once it reads again."""
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() <= self.node.backlog_max:
            return False
        self.cut(f"{transport.get_write_buffer_size()} bytes unread")
        return True

    def cut(self, why: str) -> None:
        """Drop a client that does not read (closed as ``slow_consumer``): ``abort``, since
        a close would wait for a flush that never comes."""
        if self.cut_off or self.transport is None:
            return
        self.cut_off = True
        log.warning("%s: cutting off %s (%s): %s", self.node.id, self.conn, self.uid, why)
        self.transport.abort()

    async def send(self, frame: Mapping[str, Any]) -> bool:
        if self.ws.closed or self.too_slow():
            return False
        try:
            # aiohttp waits for the transport to drain once enough is queued: for a peer
            # that is not reading that is forever, and the caller (a drain walking every
            # session, say) would wait with it.
            async with asyncio.timeout(self.node.close_timeout_s):
                await self.ws.send_str(protocol.dumps(frame))
        except (ConnectionError, RuntimeError):
            return False
        except TimeoutError:
            self.cut(f"a send waited {self.node.close_timeout_s}s for it to read")
            return False
        except ValueError as exc:  # NaN, or half a surrogate pair, in a core's frame
            log.warning("not sending a frame no client could read: %s", exc)
            return False
        return True

    async def pong(self, data: bytes) -> None:
        """Answer a protocol PING, bounded as ``send`` is."""
        if self.ws.closed or self.too_slow():
            return
        try:
            async with asyncio.timeout(self.node.close_timeout_s):
                await self.ws.pong(data)
        except (ConnectionError, RuntimeError):
            pass
        except TimeoutError:
            self.cut(f"a pong waited {self.node.close_timeout_s}s for it to read")

    async def close(self, code: int, reason: str) -> None:
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(self.node.close_timeout_s):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            pass
        except TimeoutError:
            # The close frame waits behind frames the peer is not reading (it is gone, or
            # stuck): drop the connection rather than wait for a flush that never comes.
            if self.transport is not None:
                self.transport.abort()


class AccessMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"node": node_id}
        self.connections = Gauge(
            "imctl_access_connections", "Open client connections", ["node"], registry=self.registry
        ).labels(**labels)
        # Per handshake, frame and close: lock-free loop metrics (control/common/metrics.py).
        self.handshakes = LoopCounter(
            "imctl_access_handshakes_total",
            "WebSocket handshakes by result",
            ["node", "result"],
            self.registry,
        )
        self.frames = LoopCounter(
            "imctl_access_frames_total", "Client frames by type", ["node", "type"], self.registry
        )
        self.frame_errors = LoopCounter(
            "imctl_access_frame_errors_total",
            "Rejected client frames by code",
            ["node", "code"],
            self.registry,
        )
        self.closes = LoopCounter(
            "imctl_access_closes_total",
            "Connections closed by reason",
            ["node", "reason"],
            self.registry,
        )
        self.flush = Histogram(
            "imctl_access_heartbeat_flush_seconds",
            "Time to flush one heartbeat batch",
            ["node"],
            registry=self.registry,
        ).labels(**labels)
        self.push_write = Histogram(
            "imctl_access_push_write_seconds",
            "Time to write one internal push's frame to all its recipients' sockets",
            ["node"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        ).labels(**labels)
        self.draining = Gauge(
            "imctl_access_draining", "1 while the node drains", ["node"], registry=self.registry
        ).labels(**labels)
        self.pushes = Counter(
            "imctl_access_push_frames_total",
            "Frames delivered through the internal push API",
            ["node"],
            registry=self.registry,
        ).labels(**labels)
        self.node_id = node_id

    def frame(self, kind: str) -> None:
        self.frames.inc(self.node_id, kind)

    def handshake(self, result: str) -> None:
        self.handshakes.inc(self.node_id, result)

    def closed(self, reason: str) -> None:
        self.closes.inc(self.node_id, reason)


class AccessNode:
    def __init__(
        self,
        settings: Settings,
        node: AccessNodeSettings,
        kv: KeyValueStore,
        presence: PresenceCluster,
    ) -> None:
        self.settings = settings
        self.cfg = node
        self.access = settings.access
        self.backlog_max = settings.access.max_backlog_bytes
        # Interned once: every session of a platform shares the one string.
        self.platforms = {p: sys.intern(p) for p in (*settings.access.platforms, "other")}
        self.id = node.id
        self.kv = kv
        self.presence = presence
        self.keys = settings.tickets.ticket_keys()
        self.epoch = int(time.time() * 1000)
        self._seq = itertools.count(1)
        self._tag = f"{self.epoch:x}{secrets.token_hex(2)}"
        self.sessions: dict[str, Session] = {}
        # uid -> device -> session: one live connection per (user, device), and pushes
        # find a user's connections without scanning every session.
        self.by_user: dict[str, dict[str, Session]] = {}
        self.heartbeats: set[tuple[str, str, str]] = set()
        self.state: str = "up"
        self.drain_reason = ""
        self.handshaking = 0
        self.gate = TokenBuckets(self.access.handshake_rate_per_s, self.access.handshake_burst, 1)
        self.address_gate = TokenBuckets(
            self.access.handshake_rate_per_address_per_s,
            self.access.handshake_burst_per_address,
            self.access.handshake_addresses,
        )
        self.frame_rate = self.access.frame_rate_per_s
        self.frame_burst = self.access.frame_burst
        self.flood_error = protocol.FrameError(
            "rate_limited", f"more than {self.frame_rate:g} frames per second; slow down"
        )
        self.registry = Registry(kv, settings.cluster.prefix)
        self.registration: Registration | None = None
        self.peers: dict[str, NodeRecord] = {}
        self.pusher = Pusher(
            presence,
            self.peer_url,
            self.access.internal_token,
            keepalive_s=settings.connections.client_keepalive_s,
        )
        self.core: MessageCore = load_core(
            self.access.core,
            CoreContext(
                self.id,
                self.pusher.push,
                self.access.core_options,
                logging.getLogger(f"imctl.core.{self.id}"),
            ),
        )
        self.metrics = AccessMetrics(self.id)
        self.supervisor = Supervisor(f"access:{self.id}")
        self.ready = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_requested: DrainRequest | None = None
        self._drain_key = drain_prefix(settings.cluster.prefix) + self.id
        self._drain_unreadable: bytes | None = None  # the value last warned about
        self.drains = 0  # drains started, for any reason
        self.peer_mirror: PrefixMirror[NodeRecord] | None = None
        self.drain_mirror: PrefixMirror[DrainRequest] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._missing_from_registry = False
        hb = settings.heartbeat
        self.idle_timeout_s = hb.timeout_s
        self.idle_check_s = min(hb.interval_s / 2, 5.0)
        # How long a close may wait for its frame to be flushed before the connection is
        # dropped; a live client reads it within a heartbeat interval.
        self.close_timeout_s = min(hb.interval_s, 5.0)

    # -- identity and registration ---------------------------------------------------------
    def record(self) -> NodeRecord:
        c = self.cfg
        return NodeRecord(
            id=c.id,
            endpoint=c.public_endpoint(),
            region=c.region,
            zone=c.zone,
            pool=c.pool,
            version=c.version,
            capacity=c.capacity,
            conns=len(self.sessions),
            state="draining" if self.state == "draining" else "up",
            epoch=self.epoch,
            weight=c.weight,
            internal=c.internal_url(),
        )

    def peer_url(self, node_id: str) -> str | None:
        if node_id == self.id:
            return self.cfg.internal_url()
        peer = self.peers.get(node_id)
        return peer.internal if peer is not None and peer.internal else None

    async def report_once(self, force: bool = False) -> bool:
        if self.registration is None:
            return False
        return await self.registration.publish(self.record(), force=force)

    async def _report_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Written every tick, changed or not: the report's age (REPORTED in `imctl
            # nodes`, the scheduler's pending window) then says the node is alive and its
            # load is current, never "110s ago" for a healthy idle node. One put per node
            # per report_interval_s; it also writes back a record deleted by hand.
            missing, self._missing_from_registry = self._missing_from_registry, False
            try:
                if await self.report_once(force=True) and missing:
                    log.warning(
                        "%s: own record was gone from the registry; wrote it again", self.id
                    )
            except BackendUnavailable as exc:
                self._missing_from_registry |= missing
                log.warning("%s: load report failed: %s", self.id, exc)
            await pause(stop, self.access.report_interval_s)

    # -- heartbeats and idle connections ---------------------------------------------------
    async def flush_heartbeats_once(self) -> int:
        """Send every heartbeat since the last flush in one call per shard; log in again
        the connections this node still holds whose entries are gone (a shard restarted
        and lost them). Returns how many entries were re-asserted."""
        if not self.heartbeats:
            return 0
        batch, self.heartbeats = self.heartbeats, set()
        started = time.perf_counter()
        try:
            missing = await self.presence.touch(batch)
        except BackendUnavailable as exc:
            log.warning("%s: heartbeat flush failed (%s); keeping %d", self.id, exc, len(batch))
            self.heartbeats |= batch
            return 0
        self.metrics.flush.observe(time.perf_counter() - started)
        alive = [self.sessions[conn] for _uid, _device, conn in missing if conn in self.sessions]
        if not alive:
            return 0
        log.warning(
            "%s: %d live connections had no presence entry; logging them in again",
            self.id,
            len(alive),
        )
        results = await asyncio.gather(
            *(self.presence.online(self._entry(s)) for s in alive), return_exceptions=True
        )
        return sum(1 for r in results if not isinstance(r, BaseException))

    def _entry(self, session: Session) -> Presence:
        return Presence(
            session.uid,
            session.device,
            self.id,
            session.conn,
            self.epoch,
            "online",
            session.region,
            session.platform,
        )

    async def _flush_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.settings.presence.flush_s)
            await self.flush_heartbeats_once()

    async def sweep_idle_once(self) -> int:
        """Close connections silent for the heartbeat timeout."""
        cutoff = time.monotonic() - self.idle_timeout_s
        silent = [s for s in self.sessions.values() if s.last_seen < cutoff]
        # Together: a peer that is gone can take close_timeout_s, and a network blip makes
        # thousands go silent at once.
        await asyncio.gather(*(s.close(protocol.CLOSE_IDLE, "idle") for s in silent))
        return len(silent)

    async def _idle_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.idle_check_s)
            await self.sweep_idle_once()

    # -- drain -------------------------------------------------------------------------------
    def on_drain_requests(self, requests: Mapping[str, DrainRequest]) -> None:
        """Drain when a new request for this node appears, take clients again when it goes.

        Requests are compared as parsed records: seeing the same request again (a
        re-listing, a rewrite of the same value) never restarts a drain.
        """
        wanted = requests.get(self.id)
        if wanted == self._drain_requested:
            return
        self._drain_requested = wanted
        if wanted is None:
            self.undrain()
        else:
            self.start_drain(wanted.over_s, "drain")

    def _parse_drain(self, key: str, raw: bytes) -> DrainRequest | None:
        """This node's drain request; None for other nodes' keys, and (with one warning per
        value) for anything that is not a well-formed request."""
        if key != self._drain_key:
            return None
        try:
            request = DrainRequest.from_json(raw)
        except ValueError as exc:
            if raw != self._drain_unreadable:
                self._drain_unreadable = raw
                log.warning("%s: ignoring the value at %s: %s", self.id, key, exc)
            return None
        self._drain_unreadable = None  # a bad value written again later warns again
        return request

    def start_drain(self, over_s: float, reason: str) -> asyncio.Task[None]:
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        self._drain_task = asyncio.create_task(self.drain(over_s, reason), name="drain")
        self.drains += 1
        return self._drain_task

    def undrain(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        self.state = "up"
        self.metrics.draining.set(0)
        self._spawn(self.report_once(force=True))
        log.warning("%s: drain cancelled; taking new clients again", self.id)

    async def drain(self, over_s: float, reason: str) -> None:
        """Stop taking clients and tell every connected one to reconnect elsewhere, spread
        over ``over_s`` at no more than ``drain_max_rate`` per second."""
        self.state = "draining"
        self.drain_reason = reason
        self.metrics.draining.set(1)
        try:
            await self.report_once(force=True)
        except BackendUnavailable as exc:
            log.warning("%s: could not publish draining: %s", self.id, exc)
        sessions = list(self.sessions.values())
        random.shuffle(sessions)
        count = len(sessions)
        gap = max(over_s / count if count else 0.0, 1.0 / self.access.drain_max_rate)
        log.warning("%s: draining %d connections over %.0fs (%s)", self.id, count, over_s, reason)
        grace = self.access.reconnect_grace_s
        closers: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for i, session in enumerate(sessions):
            # Each client's turn comes at i * gap; the frame's jitter spreads it inside it.
            delay = start + i * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if session.conn not in self.sessions:
                continue
            jitter = int(random.uniform(0, min(gap, 1.0)) * 1000)
            await session.send(protocol.reconnect(jitter, reason))
            closers.append(asyncio.create_task(self._close_later(session, grace + jitter / 1000)))
        if closers:
            await asyncio.gather(*closers)
        log.warning("%s: drain done", self.id)

    async def _close_later(self, session: Session, after: float) -> None:
        await asyncio.sleep(after)
        await session.close(protocol.CLOSE_RECONNECT, "reconnect")

    # -- connections -------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        # Cheapest first, and the node-wide budget last: a request refused for its own
        # sake (no ticket, no upgrade, its address over its share) costs no other client
        # its turn. Every refusal closes the connection: a pipelined flood pays for a new
        # connection per answer, and those are capped per address (common/guard.py).
        params = _query(request.query_string)
        try:
            ticket = self.keys.verify(params.get("ticket", ""), self.id, time.time())
        except TicketError as exc:
            return self._refuse("bad_ticket", 401, "bad_ticket", exc.reason)
        # No per-message deflate: IM frames are small, and a zlib context per connection
        # costs memory and CPU; it also lets one pushed frame be written to many sockets.
        ws = web.WebSocketResponse(
            heartbeat=None,
            # Off: aiohttp would answer PINGs before the frame loop sees them, and a client
            # keeping the connection alive with protocol pings would be closed as idle.
            autoping=False,
            max_msg_size=self.access.max_frame_bytes * 4,
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
        if self.state != "up":
            return self._refuse(
                "draining",
                503,
                "draining",
                "this node is draining; ask the scheduler again",
                retry_after=1,
            )
        if len(self.sessions) + self.handshaking >= self.cfg.capacity:
            return self._refuse("full", 503, "full", "this node is at capacity", retry_after=1)
        self.handshaking += 1
        try:
            await ws.prepare(request)
        finally:
            self.handshaking -= 1
        # Unique across nodes and restarts: a collision would let one login pass for another.
        conn = f"{self.id}.{self._tag}.{next(self._seq)}"
        platform = params.get("platform", "")
        if platform:
            # Client-chosen: only known names become counters and metric labels.
            platform = self.platforms.get(platform, "other")
        del params  # not kept alive by this frame for the connection's lifetime
        session = Session(self, ws, conn, ticket.uid, ticket.device, platform, self.cfg.region)
        del ticket  # this frame lives as long as the connection: keep it small
        reason = "closed"
        try:
            if not await self._open(session):
                reason = "presence_unavailable"
                return ws
            self.metrics.handshake("ok")
            # The frame loop lives here, not in a helper: one coroutine frame per idle
            # connection instead of two (_serve's exists only while a frame is served).
            rate, burst = self.frame_rate, self.frame_burst
            async for msg in ws:
                error: protocol.FrameError | None = None
                if msg.type in _METERED:
                    now = time.monotonic()
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
                            error = await self._serve(session, msg.data)
                        else:
                            await self._protocol_ping(session, msg.type, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    error = protocol.FrameError("binary", "frames are JSON text, not binary")
                elif msg.type == WSMsgType.ERROR:
                    break
                if error is not None:
                    await self._strike(session, error)
                    if session.strikes >= self.access.abuse_limit:
                        await session.close(protocol.CLOSE_POLICY, "too many bad frames")
                        break
            if session.cut_off:
                reason = "slow_consumer"
            else:
                reason = "idle" if ws.close_code == protocol.CLOSE_IDLE else _reason(ws.close_code)
        finally:
            await self._close(session, reason)
        return ws

    async def _protocol_ping(self, session: Session, kind: WSMsgType, data: bytes) -> None:
        """A WebSocket PING (or an unsolicited PONG, RFC 6455 5.5.3: a one-way heartbeat)
        is a heartbeat as ``{"t":"ping"}`` is: ``last_seen`` is already marked, the
        presence entry is touched with the next flush, and a PING gets its PONG here
        (autoping is off so that the frame loop sees them at all)."""
        self.metrics.frame("ping")
        self.heartbeats.add((session.uid, session.device, session.conn))
        if kind == WSMsgType.PING:
            await session.pong(data)

    def _refuse(
        self, result: str, status: int, code: str, message: str, **extra: Any
    ) -> web.Response:
        """A handshake refused before the upgrade: counted, answered, connection closed."""
        self.metrics.handshake(result)
        response = json_error(status, code, message, **extra)
        response.force_close()
        return response

    async def _serve(self, session: Session, data: str) -> protocol.FrameError | None:
        """One text frame within the budget: answered, or why it is refused."""
        frame = protocol.parse_frame(data, self.access.max_frame_bytes)
        if isinstance(frame, protocol.FrameError):
            return frame
        t = frame["t"]
        types = self.core.types
        self.metrics.frame(t if t in types or t in protocol.CONTROL_TYPES else "other")
        if t == "ping":
            self.heartbeats.add((session.uid, session.device, session.conn))
            await session.send({"t": "pong"})
        elif t == "status":
            return await self._set_status(session, frame)
        elif t in types:
            await self._core_message(session, frame)
        else:
            return protocol.FrameError("unknown_type", f"unknown frame type {t!r}")
        return None

    async def _open(self, session: Session) -> bool:
        devices = self.by_user.get(session.uid)
        older = devices.get(session.device) if devices is not None else None
        if older is not None:
            await self._kick_local(older, "logged in on another connection")
        self.sessions[session.conn] = session
        self.by_user.setdefault(session.uid, {})[session.device] = session
        self.metrics.connections.set(len(self.sessions))
        try:
            replaced = await self.presence.online(self._entry(session))
        except (BackendUnavailable, ImctlError) as exc:
            log.warning("%s: presence unavailable at login: %s", self.id, exc)
            await session.send({"t": "error", "code": "unavailable", "message": "retry later"})
            await session.close(1011, "presence unavailable")
            return False
        if replaced is not None and replaced.conn != session.conn:
            if replaced.node == self.id:
                local = self.sessions.get(replaced.conn)
                if local is not None:
                    await self._kick_local(local, "logged in elsewhere")
            else:
                self._spawn(self._kick_remote(replaced))
        hb = self.settings.heartbeat
        await session.send(protocol.welcome(session.conn, self.id, hb.interval_s, hb.timeout_s))
        try:
            await self.core.on_open(session)
        except Exception:  # a core's bug: the connection itself is fine
            log.exception("%s: message core failed in on_open", self.id)
        return True

    async def _core_message(self, session: Session, frame: Mapping[str, Any]) -> None:
        """Hand a frame to the core. A core that fails on one frame costs the client that
        frame (an error frame says so), not its connection; it is not the client's strike."""
        try:
            await self.core.on_message(session, frame)
        except Exception:
            log.exception("%s: message core failed on a %r frame", self.id, frame.get("t"))
            self.metrics.frame_errors.inc(self.id, "internal")
            await session.send(
                {"t": "error", "code": "internal", "message": "this frame could not be handled"}
            )

    async def _strike(self, session: Session, error: protocol.FrameError) -> None:
        session.strikes += 1
        self.metrics.frame_errors.inc(self.id, error.code)
        await session.send(error.frame())

    async def _set_status(
        self, session: Session, frame: Mapping[str, Any]
    ) -> protocol.FrameError | None:
        status = frame.get("status")
        try:
            ok = await self.presence.set_status(
                session.uid, session.device, session.conn, str(status)
            )
        except BackendUnavailable:  # not the client's fault: no strike
            await session.send(
                protocol.FrameError("unavailable", "presence is unavailable; try again").frame()
            )
            return None
        except ImctlError as exc:
            return protocol.FrameError("bad_status", str(exc))
        await session.send({"t": "status", "status": status, "ok": ok})
        return None

    async def _close(self, session: Session, reason: str) -> None:
        if self.sessions.get(session.conn) is session:
            del self.sessions[session.conn]
        devices = self.by_user.get(session.uid)
        if devices is not None and devices.get(session.device) is session:
            del devices[session.device]
            if not devices:
                del self.by_user[session.uid]
        self.heartbeats.discard((session.uid, session.device, session.conn))
        self.metrics.connections.set(len(self.sessions))
        self.metrics.closed(reason)
        try:
            await self.presence.offline(session.uid, session.device, session.conn, reason)
        except ImctlError as exc:  # the controller's sweep will expire it
            log.warning("%s: offline for %s failed: %s", self.id, session.conn, exc)
        try:
            await self.core.on_close(session, reason)
        except Exception:
            log.exception("%s: message core failed in on_close", self.id)

    async def _kick_local(self, session: Session, reason: str) -> None:
        await session.send(protocol.kicked(reason))
        await session.close(protocol.CLOSE_KICKED, "kicked")

    async def _kick_remote(self, old: Presence) -> None:
        await self.pusher.call(
            old.node,
            "/internal/kick",
            {
                "uid": old.uid,
                "device": old.device,
                "conn": old.conn,
                "reason": f"logged in elsewhere ({self.id})",
            },
        )

    # -- internal API ------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        presented = bearer(request.headers.get("Authorization"))
        return presented is not None and same_secret(presented, self.access.internal_token)

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if not self._authorized(request):
            return json_error(401, "unauthorized", "internal token required")
        try:
            # Strict: the payload goes on to clients as it is.
            body = parse_json(await request.read(), protocol.loads_strict)
        except NotJson as exc:
            return json_error(400, "bad_request", f"body is not JSON: {exc}")
        if not isinstance(body, dict):
            return json_error(400, "bad_request", "body must be a JSON object")
        return body

    async def handle_push(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        uids, payload = body.get("uids"), body.get("payload")
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            return json_error(400, "bad_request", "uids: a list of strings")
        if not isinstance(payload, dict):
            return json_error(400, "bad_request", "payload: a JSON object")
        started = time.perf_counter()
        text = protocol.dumps(payload)
        frame = protocol.text_frame(text.encode())
        wanted = set(uids)
        by_user = self.by_user
        targets = [s for uid in wanted if uid in by_user for s in by_user[uid].values()]
        # One write per recipient, never an await: a frame for a client that reads slowly
        # waits in its transport's buffer, up to the node's backlog limit, past which that
        # client is cut off (too_slow) — so no reader, slow or stalled, holds up a push.
        delivered = 0
        reached: set[str] = set()
        limit = self.backlog_max
        for s in targets:
            transport = s.transport
            if transport is None or transport.is_closing() or s.ws.closed:
                continue
            if transport.get_write_buffer_size() > limit and s.too_slow():
                continue
            transport.write(frame)  # whole frames only: never interleaves with aiohttp's
            delivered += 1
            reached.add(s.uid)
        self.metrics.pushes.inc(delivered)
        self.metrics.push_write.observe(time.perf_counter() - started)
        return web.json_response({"delivered": delivered, "missing": sorted(wanted - reached)})

    async def handle_kick(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        session = self.sessions.get(str(body.get("conn", "")))
        if session is None or session.uid != body.get("uid"):
            return web.json_response({"kicked": False})
        await self._kick_local(session, str(body.get("reason", "logged in elsewhere")))
        return web.json_response({"kicked": True})

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = self.ready.is_set() and self.state == "up"
        return ready, {"state": self.state, "connections": len(self.sessions)}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        prefix = self.settings.cluster.prefix
        ttl = self.settings.registry.lease_ttl_s
        self.registration = await self.registry.register(self.record(), ttl)
        peers = self.registry.mirror(self._on_peers, verify_s=self.settings.registry.verify_s)
        drains = PrefixMirror(
            self.kv,
            drain_prefix(prefix),
            self._parse_drain,
            self.on_drain_requests,
            verify_s=self.settings.registry.verify_s,
        )
        self.peer_mirror, self.drain_mirror = peers, drains
        sup = self.supervisor
        sup.spawn("lease", self.registration.run)
        sup.spawn("load-report", self._report_forever)
        sup.spawn("heartbeat-flush", self._flush_forever)
        sup.spawn("idle-sweep", self._idle_forever)
        sup.spawn("peers", peers.run)
        sup.spawn("drain-requests", drains.run)
        self.ready.set()
        log.info("%s: serving %s (region %s)", self.id, self.cfg.public_endpoint(), self.cfg.region)

    def _on_peers(self, nodes: Mapping[str, NodeRecord]) -> None:
        self.peers = dict(nodes)
        if self.id not in nodes and not self._stopping:
            self._missing_from_registry = True

    async def stop(self, drain_s: float = 0.0) -> None:
        """Drain (when asked), close what is left, leave the registry, stop the tasks.
        Runs once; later calls return at once."""
        if self._stopping:
            return
        self._stopping = True
        if drain_s > 0 and self.sessions:
            try:
                await asyncio.wait_for(self.start_drain(drain_s, "shutdown"), drain_s + 10)
            except (TimeoutError, asyncio.CancelledError):
                pass
        self.state = "draining"
        await asyncio.gather(
            *(s.close(protocol.CLOSE_GOING_AWAY, "shutdown") for s in list(self.sessions.values()))
        )
        await self.flush_heartbeats_once()
        if self.registration is not None:
            # Shielded: leave the registry now even if shutdown is being cancelled.
            await asyncio.shield(self.registration.close())
        await self.supervisor.close(timeout=3.0)
        for task in list(self._background):
            task.cancel()
        await self.pusher.close()


# Frames that spend the connection's frame budget and count as signs of life.
_METERED = frozenset({WSMsgType.TEXT, WSMsgType.PING, WSMsgType.PONG})


def _query(query_string: str) -> dict[str, str]:
    """The few parameters /ws takes, without building (and caching on the request) a
    MultiDict that every idle connection would keep."""
    out: dict[str, str] = {}
    for part in query_string.split("&"):
        name, _, value = part.partition("=")
        if name in ("ticket", "platform") and name not in out:
            out[name] = unquote_plus(value)
    return out


def _reason(code: int | None) -> str:
    return {
        protocol.CLOSE_KICKED: "kicked",
        protocol.CLOSE_RECONNECT: "reconnect",
        protocol.CLOSE_POLICY: "abuse",
        protocol.CLOSE_GOING_AWAY: "shutdown",
        1009: "too_large",
    }.get(code or 0, "closed")


NODE = web.AppKey("node", AccessNode)
INTERNAL_BODY_MAX = 8 * 1024 * 1024


def create_app(node: AccessNode, own_backends: bool = False) -> web.Application:
    """The node's aiohttp app; ``own_backends`` closes the KV and presence on cleanup."""
    # Only the internal API takes bodies, and it reads them after checking the token: a
    # push of one chunk (Pusher.CHUNK uids of up to 128 characters, plus the payload)
    # must fit.
    app = web.Application(client_max_size=INTERNAL_BODY_MAX)
    app[NODE] = node

    async def close_sessions(app: web.Application) -> None:
        # Before aiohttp waits for handlers: open WebSockets would hold shutdown up.
        await node.stop()

    app.cleanup_ctx.append(
        lifecycle(
            node,
            opens=[node.kv.connect] if own_backends else [],
            closes=[node.presence.close, node.kv.close] if own_backends else [],
        )
    )
    app.on_shutdown.append(close_sessions)
    app.router.add_get("/ws", node.handle_ws, allow_head=False)
    app.router.add_post("/internal/push", guarded(node.handle_push))
    app.router.add_post("/internal/kick", guarded(node.handle_kick))
    add_ops_routes(
        app,
        node.supervisor,
        node.metrics.registry,
        node.readiness,
        node.settings.admin.metrics_readers(),
    )
    add_json_fallbacks(app)
    return app
