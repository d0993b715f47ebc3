"""The internal endpoint, both halves: the server (``/internal/push`` and
``/internal/kick``, behind the internal bearer token) and the client, :class:`Pusher`, the
push API: resolve users with one batch ``locate``, group them by node, deliver through each
node's internal endpoint concurrently, and report who was offline instead of dropping them
silently."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from ssl import SSLContext
from typing import Any

import aiohttp
from aiohttp import web

from control.access import protocol
from control.access.core import PushResult
from control.access.metrics import AccessMetrics
from control.access.protocol import dumps
from control.access.session import Roster, Session
from control.common.auth import bearer, same_secret
from control.common.errors import NotJson, parse_json
from control.common.ops import guarded, json_error
from control.presence.cluster import PresenceCluster

log = logging.getLogger(__name__)
_JSON = {"Content-Type": "application/json"}

PUSH = "/internal/push"
KICK = "/internal/kick"
# Only the internal endpoint takes bodies, and it reads them after checking the token: a
# push of one chunk (Pusher.CHUNK uids of up to 128 characters, plus the payload) must fit.
BODY_MAX = 8 * 1024 * 1024


def authorized(authorization: str | None, token: str) -> bool:
    """The internal token, checked in constant time (control.common.auth)."""
    presented = bearer(authorization)
    return presented is not None and same_secret(presented, token)


class InternalEndpoint:
    """The server half: other nodes (and this one) push frames to the users this node
    holds, and kick a connection whose (user, device) logged in elsewhere."""

    def __init__(
        self,
        token: str,
        roster: Roster,
        metrics: AccessMetrics,
        kick: Callable[[Session, str], Awaitable[None]],
    ) -> None:
        self.token = token
        self.roster = roster
        self.metrics = metrics
        self.kick = kick

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PUSH, guarded(self.handle_push))
        app.router.add_post(KICK, guarded(self.handle_kick))

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if not authorized(request.headers.get("Authorization"), self.token):
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
        frame = protocol.text_frame(protocol.dumps(payload).encode())
        wanted = set(uids)
        # One write per recipient, never an await: a frame for a client that reads slowly
        # waits in its transport's buffer, up to the node's backlog limit, past which that
        # client is cut off (too_slow) — so no reader, slow or stalled, holds up a push.
        delivered = 0
        reached: set[str] = set()
        for s in self.roster.of_users(wanted):
            if s.write_frame(frame):
                delivered += 1
                reached.add(s.uid)
        self.metrics.pushes.inc(delivered)
        self.metrics.push_write.observe(time.perf_counter() - started)
        return web.json_response({"delivered": delivered, "missing": sorted(wanted - reached)})

    async def handle_kick(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        session = self.roster.get(str(body.get("conn", "")))
        if session is None or session.uid != body.get("uid"):
            return web.json_response({"kicked": False})
        await self.kick(session, str(body.get("reason", "logged in elsewhere")))
        return web.json_response({"kicked": True})


class Pusher:
    # Uids per internal request: a big group's share of one node goes in several requests,
    # concurrently. 5,000 uids of the longest kind (128 characters) are ~660 KB: inside the
    # node's body limit, and under the size at which aiohttp warns about sending raw bytes.
    CHUNK = 5_000

    def __init__(
        self,
        presence: PresenceCluster,
        node_url: Callable[[str], str | None],
        token: str,
        timeout_s: float = 2.0,
        chunk: int = CHUNK,
        keepalive_s: float = 2.0,
        ssl: SSLContext | None = None,
    ) -> None:
        self.presence = presence
        self.ssl = ssl  # for peers' https:// internal URLs (access.tls.ca); None: the system's
        self.node_url = node_url
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.chunk = chunk
        # Below the nodes' idle deadline (connections.idle_timeout_s): a pooled connection
        # the peer has already closed would fail the push that picked it up.
        self.keepalive_s = keepalive_s
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=self.timeout,
                headers={"Authorization": f"Bearer {self.token}"},
                connector=aiohttp.TCPConnector(
                    limit=256,
                    keepalive_timeout=self.keepalive_s,
                    ssl=self.ssl if self.ssl is not None else True,
                ),
            )
        return self._http

    async def push(self, uids: Sequence[str], payload: Mapping[str, Any]) -> PushResult:
        """Deliver ``payload`` to every device of ``uids``. Raises ValueError when the payload
        is not JSON any client could read (NaN, half a surrogate pair): a core's mistake,
        told to the core rather than to every node."""
        packed = dumps(payload).encode()  # once, not once per node and chunk
        wanted = list(dict.fromkeys(uids))
        found = await self.presence.locate(wanted)
        # Nothing between the lookup and the deliveries that they do not need: no sorting
        # (a chunk is any 5,000 of a node's users), offline users worked out afterwards.
        batches = [
            (node, members[i : i + self.chunk])
            for node, group in found.by_node().items()
            for members in [list(group)]
            for i in range(0, len(members), self.chunk)
        ]
        results = await asyncio.gather(
            *(self._deliver(node, batch, packed) for node, batch in batches)
        )
        present = found.uids()
        unknown = found.unknown  # their shard is down: not offline, just not known
        offline = {u for u in wanted if u not in present and u not in unknown}
        delivered = 0
        failed_nodes: set[str] = set()
        failed: set[str] = set()
        reached: set[str] = set()
        for (node, batch), (ok, count, missing) in zip(batches, results, strict=True):
            if not ok:
                failed_nodes.add(node)
                failed.update(batch)
                continue
            delivered += count
            reached.update(set(batch) - set(missing))
        # A user counts as offline when no node that answered holds it any more.
        offline |= present - reached - failed
        return PushResult(
            delivered,
            tuple(sorted(offline)),
            tuple(sorted(failed - reached)),
            tuple(sorted(failed_nodes)),
            tuple(sorted(u for u in wanted if u in unknown)),
        )

    async def _deliver(
        self, node: str, uids: list[str], packed: bytes
    ) -> tuple[bool, int, list[str]]:
        raw = b'{"uids":' + dumps(uids).encode() + b',"payload":' + packed + b"}"
        body = await self.call(node, PUSH, raw)
        if body is None:
            return False, 0, []
        return True, int(body.get("delivered", 0)), list(body.get("missing", []))

    async def call(
        self, node: str, path: str, body: Mapping[str, Any] | bytes
    ) -> dict[str, Any] | None:
        """POST JSON (a mapping, or already encoded) to a node's internal API with the
        internal token; None when it failed."""
        base = self.node_url(node)
        if base is None:
            log.warning("internal call %s: node %s is not in the registry", path, node)
            return None
        try:
            raw = body if isinstance(body, bytes) else dumps(body).encode()
            async with self._session().post(f"{base}{path}", data=raw, headers=_JSON) as resp:
                if resp.status != 200:
                    log.warning("internal call %s on %s: HTTP %d", path, node, resp.status)
                    return None
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            log.warning("internal call %s on %s failed: %r", path, node, exc)
            return None
        return data if isinstance(data, dict) else None

    async def kick(self, node: str, uid: str, device: str, conn: str, reason: str) -> bool:
        """Ask ``node`` to close one connection of ``uid`` (it logged in elsewhere); True
        when that node did."""
        body = await self.call(
            node, KICK, {"uid": uid, "device": device, "conn": conn, "reason": reason}
        )
        return bool(body is not None and body.get("kicked"))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
