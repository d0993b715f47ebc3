"""A connected client (its state, send, close) and the node's roster of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from control.access import protocol
from control.gray.model import UserContext, Version

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What every session of a node shares: one object, not a copy per connection."""

    node_id: str
    #: unread bytes queued for a client before it is cut off
    backlog_max: int
    #: how long a send or close waits for the peer to read before dropping it
    close_timeout_s: float
    #: the frame budget a new connection starts with
    frame_burst: float


class Session:
    """One client connection."""

    __slots__ = (
        "app_version",
        "conn",
        "cut_off",
        "device",
        "last_seen",
        "limits",
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
        limits: SessionLimits,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        conn: str,
        uid: str,
        device: str,
        platform: str,
        region: str,
        now: float,
        app_version: Version | None = None,
    ) -> None:
        self.limits = limits
        self.ws = ws
        # The request's own transport (public: web.BaseRequest.transport), taken after the
        # upgrade: pushes write whole frames to it, and its buffer says who stopped reading.
        self.transport = transport
        self.conn = conn
        self.uid = uid
        self.device = device
        self.platform = platform
        self.region = region
        self.last_seen = now
        self.tokens = limits.frame_burst  # the frame budget, refilled since last_seen
        self.strikes = 0
        self.cut_off = False
        #: the client's app version (``?version=`` on /ws); None when it named none
        self.app_version = app_version

    def context(self) -> UserContext | None:
        """What a release rule looks at, for following releases (the user's region taken as
        the node's: the scheduler places users in their own region first); None when the
        app version is unknown."""
        if self.app_version is None:
            return None
        return UserContext(self.uid, self.platform, self.app_version, self.region)

    def too_slow(self) -> bool:
        """True, and the connection cut, when the client has stopped reading: past the
        node's backlog limit its frames would pile up in this process's memory for as long
        as it keeps sending pings. It reconnects once it reads again."""
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() <= self.limits.backlog_max:
            return False
        self.cut(f"{transport.get_write_buffer_size()} bytes unread")
        return True

    def cut(self, why: str) -> None:
        """Drop a client that does not read (closed as ``slow_consumer``): ``abort``, since
        a close would wait for a flush that never comes."""
        if self.cut_off or self.transport is None:
            return
        self.cut_off = True
        log.warning("%s: cutting off %s (%s): %s", self.limits.node_id, self.conn, self.uid, why)
        self.transport.abort()

    def write_frame(self, frame: bytes) -> bool:
        """Write one whole pre-built frame (a push) without waiting: it queues in the
        transport up to the backlog limit, past which the client is cut off. Whole frames
        only, so it never interleaves with aiohttp's own writes."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.ws.closed:
            return False
        if transport.get_write_buffer_size() > self.limits.backlog_max and self.too_slow():
            return False
        transport.write(frame)
        return True

    async def send(self, frame: Mapping[str, Any]) -> bool:
        if self.ws.closed or self.too_slow():
            return False
        timeout = self.limits.close_timeout_s
        try:
            # aiohttp waits for the transport to drain once enough is queued: for a peer
            # that is not reading that is forever, and the caller (a drain walking every
            # session, say) would wait with it.
            async with asyncio.timeout(timeout):
                await self.ws.send_str(protocol.dumps(frame))
        except (ConnectionError, RuntimeError):
            return False
        except TimeoutError:
            self.cut(f"a send waited {timeout}s for it to read")
            return False
        except ValueError as exc:  # NaN, or half a surrogate pair, in a core's frame
            log.warning("not sending a frame no client could read: %s", exc)
            return False
        return True

    async def pong(self, data: bytes) -> None:
        """Answer a protocol PING, bounded as ``send`` is."""
        if self.ws.closed or self.too_slow():
            return
        timeout = self.limits.close_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.ws.pong(data)
        except (ConnectionError, RuntimeError):
            pass
        except TimeoutError:
            self.cut(f"a pong waited {timeout}s for it to read")

    async def close(self, code: int, reason: str) -> None:
        if self.ws.closed:
            return
        try:
            async with asyncio.timeout(self.limits.close_timeout_s):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            pass
        except TimeoutError:
            # The close frame waits behind frames the peer is not reading (it is gone, or
            # stuck): drop the connection rather than wait for a flush that never comes.
            if self.transport is not None:
                self.transport.abort()


class Roster:
    """The node's live sessions, by connection id and by (user, device): one live
    connection per (user, device), and pushes find a user's connections without scanning
    every session."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.by_user: dict[str, dict[str, Session]] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(self.sessions.values())

    def get(self, conn: str) -> Session | None:
        return self.sessions.get(conn)

    def of_device(self, uid: str, device: str) -> Session | None:
        devices = self.by_user.get(uid)
        return devices.get(device) if devices is not None else None

    def of_users(self, uids: Iterable[str]) -> list[Session]:
        by_user = self.by_user
        return [s for uid in uids if uid in by_user for s in by_user[uid].values()]

    def add(self, session: Session) -> None:
        self.sessions[session.conn] = session
        self.by_user.setdefault(session.uid, {})[session.device] = session

    def remove(self, session: Session) -> None:
        """Forget ``session`` (not a newer one that took its place)."""
        if self.sessions.get(session.conn) is session:
            del self.sessions[session.conn]
        devices = self.by_user.get(session.uid)
        if devices is not None and devices.get(session.device) is session:
            del devices[session.device]
            if not devices:
                del self.by_user[session.uid]
