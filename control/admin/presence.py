"""``/v1/presence``: who is online where (one user, or many in one batch locate), counts,
and the event stream of online, offline and status changes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web

from control.admin.auth import ADMIN, require
from control.common.errors import BackendUnavailable, NotJson, parse_json
from control.common.ops import json_error
from control.common.wire import EVENTS_COUNT_MAX, UID_RE, event_count
from control.presence.model import PresenceEvent, ShardUnavailable
from control.presence.status import presence_status
from control.scheduler.state import METRICS, PRESENCE, STATE

log = logging.getLogger(__name__)


@require("viewer")
async def presence_who(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    if not UID_RE.fullmatch(uid):
        return json_error(400, "bad_request", "uid: not a valid uid", field="uid")
    try:
        entries = await request.app[PRESENCE].who(uid)
    except ShardUnavailable as exc:  # not offline: not known while its shard is down
        message = f"presence of {uid} is unknown: {exc}"
        return json_error(503, "unavailable", message, presence="unknown", retry_after=1)
    return web.json_response(
        {"uid": uid, "online": bool(entries), "devices": [e.public() for e in entries]}
    )


@require("viewer")
async def presence_status_handler(request: web.Request) -> web.Response:
    """The presence engine, its members and their health (``imctl presence status``)."""
    try:
        body = await presence_status(request.app[PRESENCE])
    except BackendUnavailable as exc:
        return json_error(503, "unavailable", f"presence status: {exc}", retry_after=1)
    return web.json_response(body)


@require("viewer")
async def presence_count(request: web.Request) -> web.Response:
    by = request.query.get("by")
    if by not in (None, "region", "node", "platform"):
        return json_error(400, "bad_request", "by: one of region, node, platform", field="by")
    counts = await request.app[PRESENCE].counts()
    body: dict[str, Any] = {"total": counts.total}
    if by:
        body["by"] = by
        body["counts"] = dict(sorted(counts.by(by).items()))
    return web.json_response(body)


LOOKUP_MAX = 10_000  # uids per lookup: one batch locate, answered in a few ms


@require("viewer")
async def presence_lookup(request: web.Request) -> web.Response:
    """Where many users are connected, in one batch ``locate``: ``{"uids": [...]}`` in,
    each online user's devices and the offline uids out (no last_seen: that would cost a
    read per user)."""
    try:
        body = parse_json(await request.read())
    except NotJson as exc:
        return json_error(400, "bad_request", f"body is not JSON: {exc}", field="body")
    uids = body.get("uids") if isinstance(body, dict) else None
    if not isinstance(uids, list) or not 1 <= len(uids) <= LOOKUP_MAX:
        message = f"uids: a list of 1 to {LOOKUP_MAX} uids"
        return json_error(400, "bad_request", message, field="uids")
    for i, uid in enumerate(uids):
        if not isinstance(uid, str) or not UID_RE.fullmatch(uid):
            shown = repr(uid) if len(repr(uid)) <= 40 else repr(uid)[:40] + "..."
            return json_error(400, "bad_request", f"uids[{i}]: {shown} is not a uid", field="uids")
    wanted = list(dict.fromkeys(uids))
    found = await request.app[PRESENCE].locate(wanted)  # down: guarded() answers 503
    online: dict[str, list[dict[str, object]]] = {}
    offline: list[str] = []
    unknown: list[str] = []  # on a shard that is down: not offline, just not known now
    for uid in wanted:
        entries = found.get(uid)
        if entries:
            online[uid] = [
                {k: v for k, v in e.public().items() if k != "last_seen"} for e in entries
            ]
        elif uid in found.unknown:
            unknown.append(uid)
        else:
            offline.append(uid)
    return web.json_response({"online": online, "offline": offline, "unknown": unknown})


EVENTS_KEEPALIVE_S = 10.0  # a blank line this often keeps proxies from dropping a quiet tail
EVENTS_CHECK_S = 1.0  # how soon a tail whose reader left gives up its place


def _event_line(event: PresenceEvent) -> bytes:
    fields = {f: getattr(event, f) for f in event.__dataclass_fields__}
    return json.dumps(fields, ensure_ascii=False).encode() + b"\n"


@require("viewer")
async def presence_events(request: web.Request) -> web.StreamResponse:
    """Online, offline and status changes as they happen, one JSON object a line, from
    every shard; ``uid`` keeps one user's, ``count`` ends the stream after that many."""
    uid = request.query.get("uid")
    if uid is not None and not UID_RE.fullmatch(uid):
        return json_error(400, "bad_request", "uid: not a valid uid", field="uid")
    raw_count = request.query.get("count")
    count = None
    if raw_count is not None:
        count = event_count(raw_count)
        if count is None:
            message = f"count: a whole number from 1 to {EVENTS_COUNT_MAX}"
            return json_error(400, "bad_request", message, field="count")
    presence = request.app[PRESENCE]
    state = request.app[STATE]
    cap = request.app[ADMIN].max_event_tails
    if state.tails >= cap:
        # Each tail keeps a shard connection in a blocking read most of the time.
        message = f"{cap} event tails are open on this scheduler (scheduler.max_event_tails)"
        return json_error(503, "too_many_tails", message, retry_after=5)
    # Pinned before the answer starts: what happens after the 200 is in the stream.
    start = await presence.event_positions()  # down: guarded() answers 503
    stop = asyncio.Event()
    queue: asyncio.Queue[PresenceEvent] = asyncio.Queue(maxsize=1000)

    async def follow() -> None:
        async for event in presence.events(block_ms=1000, start=start, stop=stop):
            if uid is None or event.uid == uid:
                await queue.put(event)  # a slow reader backs the followers up, boundedly

    response = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    follower = asyncio.create_task(follow(), name="presence-events")
    stopping = asyncio.ensure_future(state.stopping.wait())
    getter: asyncio.Future[PresenceEvent] | None = None
    sent = 0
    quiet_since = time.monotonic()
    state.tails += 1
    metrics = request.app[METRICS]
    metrics.event_tails.set(state.tails)
    try:
        while count is None or sent < count:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, stopping, follower},
                timeout=EVENTS_CHECK_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter in done:
                await response.write(_event_line(getter.result()))
                sent += 1
                quiet_since = time.monotonic()
                continue
            getter.cancel()
            if done:  # shutting down, or the follower ended
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the reader left: free its place (and its shard reads) now
            if time.monotonic() - quiet_since >= EVENTS_KEEPALIVE_S:
                await response.write(b"\n")  # through proxies that drop quiet streams
                quiet_since = time.monotonic()
    except ConnectionError:
        pass  # the reader went away mid-write
    finally:
        state.tails -= 1
        metrics.event_tails.set(state.tails)
        stop.set()
        # Cancelled and awaited, every one: a task dropped while pending is logged by
        # asyncio ("Task was destroyed but it is pending!") once per tail that ended.
        pending = [f for f in (getter, stopping, follower) if f is not None]
        for f in pending:
            f.cancel()
        *_, failed = await asyncio.gather(*pending, return_exceptions=True)
        if isinstance(failed, Exception):  # the stream ended early: say why, once
            log.error("presence event tail ended: %r", failed, exc_info=failed)
    return response
