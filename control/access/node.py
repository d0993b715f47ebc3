"""The access node: its sessions' lifecycle (open, frames, close, kicks), drain, and its
own start and stop. The parts it is built from live beside it, one job each: session,
heartbeat, drain, registration, internal (the internal endpoint), metrics; app.py is the
aiohttp edge (the WebSocket handshake and frame loop)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from control.access import protocol
from control.access.config import NodeConfig
from control.access.core import CoreContext, MessageCore, load_core
from control.access.drain import DrainOrders, drain_schedule, follow
from control.access.follow import ReleaseFollower
from control.access.heartbeat import HeartbeatBatch
from control.access.internal import InternalEndpoint, Pusher
from control.access.metrics import AccessMetrics
from control.access.rebalance import Shedder
from control.access.registration import Membership
from control.access.session import Roster, Session, SessionLimits
from control.common.errors import BackendUnavailable, ImctlError
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.rebalance import NAME, RebalancePlan, rebalance_plans
from control.common.registry import (
    DrainRequest,
    NodeRecord,
    Registration,
    Registry,
    drain_requests,
)
from control.common.tasks import Supervisor, pause
from control.common.tls import client_context
from control.gray.model import Release, Version
from control.gray.stable import StableStore
from control.gray.store import GrayStore
from control.gray.track import MoveReason, NodeTrack
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class AccessNode:
    def __init__(
        self,
        config: NodeConfig,
        kv: KeyValueStore,
        presence: PresenceCluster,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.cfg = config.node
        self.access = config.access
        self.id = config.id
        self.kv = kv
        self.presence = presence
        #: reads the time for every decision the node takes (idle cutoff, frame budgets,
        #: the drain's walk, handshake rates); tests drive it
        self.clock = clock
        self.epoch = int(time.time() * 1000)
        self.roster = Roster()
        self.sessions = self.roster.sessions
        self.by_user = self.roster.by_user
        self.limits = SessionLimits(
            self.id, self.access.max_backlog_bytes, config.close_timeout_s, self.access.frame_burst
        )
        self.state: str = "up"
        self.drain_reason = ""
        self.metrics = AccessMetrics(self.id)
        n = self.cfg
        self.metrics.describe(n.region, n.zone, n.pool, n.version, n.capacity)
        self.membership = Membership(
            config, kv, self.epoch, lambda: len(self.sessions), lambda: self.state == "draining"
        )
        self.pusher = Pusher(
            presence,
            self.membership.peer_url,
            self.access.internal_token,
            keepalive_s=config.push_keepalive_s,
            ssl=client_context(self.access.tls.ca) if self.access.tls.enabled else None,
        )
        self.internal = InternalEndpoint(
            self.access.internal_token, self.roster, self.metrics, self.kick_local
        )
        self.heartbeats = HeartbeatBatch(
            self.id, presence, self.roster, self.entry, self.metrics, config.flush_s
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
        self.supervisor = Supervisor(f"access:{self.id}")
        self.ready = asyncio.Event()
        self.orders = DrainOrders(
            self.id,
            lambda request: self.start_drain(request.over_s, "drain"),
            self.undrain,
        )
        self.drain_mirror: PrefixMirror[DrainRequest] | None = None
        self.follower = ReleaseFollower(
            NodeTrack(self.cfg.pool, self.cfg.version),
            config.releases,
            lambda: list(self.sessions.values()),
            window_s=self.access.drain_s,
            max_rate=self.access.drain_max_rate,
            grace_s=self.access.reconnect_grace_s,
            tell=self.tell_reconnect,
            close=self._close_reconnect,
            retire=lambda stable: self.start_drain(self.access.drain_s, "promote"),
            spawn=self.supervisor.errand,
            clock=clock,
            active=lambda: self.state == "up",
        )
        self.release_mirror: PrefixMirror[Release] | None = None
        self.shedder = Shedder(
            self.id,
            lambda: list(self.sessions.values()),
            max_rate=self.access.drain_max_rate,
            grace_s=self.access.reconnect_grace_s,
            tell=self.tell_reconnect,
            close=self._close_reconnect,
            spawn=self.supervisor.errand,
            active=lambda: self.state == "up",
            clock=clock,
        )
        self.plan_mirror: PrefixMirror[RebalancePlan] | None = None
        self._drain_task: asyncio.Task[Any] | None = None
        self.drains = 0  # drains started, for any reason
        self._stopping = False

    # -- what others read ------------------------------------------------------------------
    @property
    def peers(self) -> dict[str, NodeRecord]:
        return self.membership.peers

    @property
    def registry(self) -> Registry:
        return self.membership.registry

    @property
    def registration(self) -> Registration | None:
        return self.membership.registration

    @property
    def peer_mirror(self) -> PrefixMirror[NodeRecord] | None:
        return self.membership.mirror

    def record(self) -> NodeRecord:
        return self.membership.record()

    async def report_once(self, force: bool = False) -> bool:
        return await self.membership.report_once(force=force)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = self.ready.is_set() and self.state == "up"
        return ready, {"state": self.state, "connections": len(self.sessions)}

    def entry(self, session: Session) -> Presence:
        """The presence entry of a session."""
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

    # -- heartbeats and idle connections ---------------------------------------------------
    async def flush_heartbeats_once(self) -> int:
        return await self.heartbeats.flush_once()

    async def sweep_idle_once(self) -> int:
        """Close connections silent for the heartbeat timeout."""
        cutoff = self.clock() - self.config.idle_timeout_s
        silent = [s for s in self.sessions.values() if s.last_seen < cutoff]
        # Together: a peer that is gone can take close_timeout_s, and a network blip makes
        # thousands go silent at once.
        await asyncio.gather(*(s.close(protocol.CLOSE_IDLE, "idle") for s in silent))
        return len(silent)

    async def _idle_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.config.idle_check_s)
            await self.sweep_idle_once()

    # -- drain -------------------------------------------------------------------------------
    def on_drain_requests(self, requests: Mapping[str, DrainRequest]) -> None:
        self.orders.seen(requests)

    def start_drain(self, over_s: float, reason: str) -> asyncio.Task[Any]:
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        self._drain_task = self.supervisor.errand("drain", self.drain(over_s, reason))
        self.drains += 1
        return self._drain_task

    def undrain(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        self.state = "up"
        self.metrics.draining.set(0)
        self.supervisor.errand("report", self.report_once(force=True))
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
        plan = drain_schedule(sessions, over_s, self.access.drain_max_rate)
        log.warning(
            "%s: draining %d connections over %.0fs (%s)", self.id, len(sessions), over_s, reason
        )

        moved: MoveReason = "promote" if reason == "promote" else "drain"

        async def tell(session: Session, jitter_s: float) -> bool:
            return await self.tell_reconnect(session, jitter_s, moved)

        await follow(plan, tell, self._close_reconnect, self.access.reconnect_grace_s, self.clock)
        log.warning("%s: drain done", self.id)

    async def tell_reconnect(self, session: Session, jitter_s: float, reason: MoveReason) -> bool:
        """A ``reconnect`` frame (False: the session is gone), counted as moved by reason."""
        if session.conn not in self.sessions:
            return False
        await session.send(protocol.reconnect(round(jitter_s * 1000), reason))
        self.metrics.moved.inc(self.id, reason)
        return True

    async def _close_reconnect(self, session: Session) -> None:
        await session.close(protocol.CLOSE_RECONNECT, "reconnect")

    def on_releases(self, releases: Mapping[str, Release]) -> None:
        self.follower.seen(releases)

    # -- connections -------------------------------------------------------------------------
    def new_session(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        conn: str,
        uid: str,
        device: str,
        platform: str,
        app_version: Version | None = None,
    ) -> Session:
        return Session(
            self.limits,
            ws,
            transport,
            conn,
            uid,
            device,
            platform,
            self.cfg.region,
            self.clock(),
            app_version,
        )

    async def open(self, session: Session) -> bool:
        older = self.roster.of_device(session.uid, session.device)
        if older is not None:
            await self.kick_local(older, "logged in on another connection")
        self.roster.add(session)
        self.metrics.connections.set(len(self.sessions))
        try:
            replaced = await self.presence.online(self.entry(session))
        except (BackendUnavailable, ImctlError) as exc:
            log.warning("%s: presence unavailable at login: %s", self.id, exc)
            await session.send({"t": "error", "code": "unavailable", "message": "retry later"})
            await session.close(1011, "presence unavailable")
            return False
        if replaced is not None and replaced.conn != session.conn:
            if replaced.node == self.id:
                local = self.sessions.get(replaced.conn)
                if local is not None:
                    await self.kick_local(local, "logged in elsewhere")
            else:
                self.supervisor.errand("kick", self._kick_remote(replaced))
        hb = self.config.heartbeat
        await session.send(protocol.welcome(session.conn, self.id, hb.interval_s, hb.timeout_s))
        try:
            await self.core.on_open(session)
        except Exception:  # a core's bug: the connection itself is fine
            log.exception("%s: message core failed in on_open", self.id)
        return True

    async def serve(self, session: Session, data: str) -> protocol.FrameError | None:
        """One text frame within the budget: answered, or why it is refused."""
        frame = protocol.parse_frame(data, self.access.max_frame_bytes)
        if isinstance(frame, protocol.FrameError):
            return frame
        t = frame["t"]
        types = self.core.types
        self.metrics.frame(t if t in types or t in protocol.CONTROL_TYPES else "other")
        if t == "ping":
            self.heartbeats.touch(session)
            await session.send({"t": "pong"})
        elif t == "status":
            return await self._set_status(session, frame)
        elif t in types:
            await self._core_message(session, frame)
        else:
            return protocol.FrameError("unknown_type", f"unknown frame type {t!r}")
        return None

    async def protocol_ping(self, session: Session, kind: WSMsgType, data: bytes) -> None:
        """A WebSocket PING (or an unsolicited PONG, RFC 6455 5.5.3: a one-way heartbeat)
        is a heartbeat as ``{"t":"ping"}`` is: ``last_seen`` is already marked, the
        presence entry is touched with the next flush, and a PING gets its PONG here
        (autoping is off so that the frame loop sees them at all)."""
        self.metrics.frame("ping")
        self.heartbeats.touch(session)
        if kind == WSMsgType.PING:
            await session.pong(data)

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

    async def strike(self, session: Session, error: protocol.FrameError) -> None:
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

    async def close(self, session: Session, reason: str) -> None:
        self.roster.remove(session)
        self.heartbeats.discard(session)
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

    async def kick_local(self, session: Session, reason: str) -> None:
        await session.send(protocol.kicked(reason))
        await session.close(protocol.CLOSE_KICKED, "kicked")

    async def _kick_remote(self, old: Presence) -> None:
        reason = f"logged in elsewhere ({self.id})"
        await self.pusher.kick(old.node, old.uid, old.device, old.conn, reason)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        registration = await self.membership.register()
        peers = self.membership.mirror
        assert peers is not None  # built by register()
        drains = drain_requests(self.kv, self.config.prefix).mirror(
            self.orders.seen, verify_s=self.config.registry.verify_s, only=self.id
        )
        self.drain_mirror = drains
        releases = GrayStore(self.kv, self.config.prefix).mirror(
            self.on_releases, verify_s=self.config.registry.verify_s
        )
        self.release_mirror = releases
        stable = StableStore(self.kv, self.config.prefix).mirror(
            self.follower.stable_seen, verify_s=self.config.registry.verify_s
        )
        plans = rebalance_plans(self.kv, self.config.prefix).mirror(
            self.shedder.seen, verify_s=self.config.registry.verify_s, only=NAME
        )
        self.plan_mirror = plans
        sup = self.supervisor
        sup.spawn("lease", registration.run)
        sup.spawn("load-report", self.membership.run_reports)
        sup.spawn("heartbeat-flush", self.heartbeats.run)
        sup.spawn("idle-sweep", self._idle_forever)
        sup.spawn("peers", peers.run)
        sup.spawn("drain-requests", drains.run)
        sup.spawn("releases", releases.run)
        sup.spawn("stable-release", stable.run)
        sup.spawn("rebalance-plans", plans.run)
        self.ready.set()
        log.info("%s: serving %s (region %s)", self.id, self.config.endpoint, self.cfg.region)

    async def stop(self, drain_s: float = 0.0) -> None:
        """Drain (when asked), close what is left, leave the registry, stop the tasks.
        Runs once; later calls return at once."""
        if self._stopping:
            return
        self._stopping = True
        self.membership.leaving = True
        if drain_s > 0 and self.sessions:
            try:
                await asyncio.wait_for(self.start_drain(drain_s, "shutdown"), drain_s + 10)
            except (TimeoutError, asyncio.CancelledError):
                pass
        self.state = "draining"
        await asyncio.gather(
            *(s.close(protocol.CLOSE_GOING_AWAY, "shutdown") for s in list(self.sessions.values()))
        )
        await self.heartbeats.flush_once()
        await self.membership.leave()
        await self.supervisor.close(timeout=3.0)
        await self.pusher.close()
