"""``/v1/ring``: the status cluster's ring, the mover's control and progress, and
an operator's resize (add, remove, reweight a shard), pause, resume and throttle.

A change is computed by the pure transitions of control/presence/resize.py over the stored
ring and written with a compare-and-swap on the revision it was read at: a change refused,
an unreachable new shard or a lost race writes nothing. The leader controller's mover does
the moving (control/presence/mover.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from control.admin.auth import ADMIN, require, who
from control.common.errors import NotJson, parse_json
from control.common.ops import json_error
from control.common.records import Stored, to_data
from control.presence.probe import unreachable
from control.presence.resize import (
    RingChangeRefused,
    add_shard,
    moved_fraction,
    remove_shard,
    reweight_shard,
)
from control.presence.ring import RingSpec
from control.presence.ringstore import MOVER, MoverControl, RingStore
from control.scheduler.state import KV

log = logging.getLogger(__name__)

THROTTLE_MAX_PER_S = 10_000_000  # MoverControl's bound
CONTROL_TRIES = 5  # pause / resume / throttle racing each other: each CAS retried


class Refused(Exception):
    """A request answered with an error and nothing written."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.answer = (status, code, message, extra)


def _store(request: web.Request) -> RingStore:
    return RingStore(request.app[KV], request.app[ADMIN].prefix)


async def _ring(store: RingStore) -> Stored[RingSpec]:
    stored = await store.ring()
    if stored is None:
        # Seeded by every process at start: none means no process has started yet.
        raise Refused(503, "no_ring", "no ring is stored yet (it is seeded at start)")
    if stored.record is None:
        key = store.rings.key("ring")
        raise Refused(503, "unreadable_ring", f"{key} does not hold a readable ring spec")
    return stored


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = parse_json(await request.read()) if request.can_read_body else {}
    except NotJson as exc:
        raise Refused(400, "bad_request", f"body is not JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise Refused(400, "bad_request", "body: a JSON object", field="body")
    return body


def _fields(body: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    problems = [f"{k}: unknown field" for k in sorted(body.keys() - allowed)]
    problems += [f"{k}: required" for k in sorted(required - body.keys())]
    if problems:
        raise Refused(400, "bad_request", "; ".join(problems), problems=problems)


def _answer(refused: Refused) -> web.Response:
    status, code, message, extra = refused.answer
    return json_error(status, code, message, **extra)


def _refused(exc: RingChangeRefused) -> Refused:
    code = {400: "bad_request", 404: "not_found", 409: "conflict"}.get(exc.status, "refused")
    return Refused(exc.status, code, str(exc), problems=exc.problems)


async def _change(
    request: web.Request, what: str, transition: Callable[[RingSpec], RingSpec], url: str = ""
) -> web.Response:
    """Apply ``transition`` to the stored ring and CAS the result over the revision read."""
    store = _store(request)
    try:
        stored = await _ring(store)
        assert stored.record is not None  # _ring refuses an unreadable one
        try:
            spec = transition(stored.record)
        except RingChangeRefused as exc:
            raise _refused(exc) from None
        if url:
            why = await unreachable(url)
            if why is not None:
                raise Refused(503, "shard_unreachable", f"the new shard does not answer: {why}")
        written, _ = await store.change(spec, stored.revision)
        if not written:
            raise Refused(
                409,
                "conflict",
                f"the ring changed while this change was made (it was version "
                f"{stored.record.version}): read it again (imctl presence ring status) and retry",
            )
    except Refused as refused:
        return _answer(refused)
    log.warning(
        "presence ring: %s requested by %s: version %d -> %d, migrating",
        what,
        who(request),
        stored.record.version,
        spec.version,
    )
    return web.json_response({"ring": to_data(spec)}, status=202)


@require("viewer")
async def ring_status(request: web.Request) -> web.Response:
    store = _store(request)
    try:
        stored = await _ring(store)
    except Refused as refused:
        return _answer(refused)
    assert stored.record is not None
    progress = await store.read_progress()
    # Building two continua takes 30 ms to seconds (vnodes): not on the serving loop.
    fraction = await asyncio.to_thread(moved_fraction, stored.record)
    return web.json_response(
        {
            "ring": to_data(stored.record),
            "revision": stored.revision,
            "control": to_data(await store.control()),
            "progress": to_data(progress) if progress is not None else None,
            "moved_fraction": round(fraction, 6),
        }
    )


@require("operator")
async def ring_add(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        _fields(body, {"url", "weight", "id"}, {"url"})
        url, weight, shard_id = body["url"], body.get("weight", 1), body.get("id")
        problems = []
        if not isinstance(url, str):
            problems.append("url: a string")
        if shard_id is not None and not isinstance(shard_id, str):
            problems.append("id: a string")
        if problems:
            raise Refused(400, "bad_request", "; ".join(problems), problems=problems)
    except Refused as refused:
        return _answer(refused)
    # The weight's type is resize's to check, with every other problem.
    return await _change(
        request, f"add {url}", lambda spec: add_shard(spec, url, weight, shard_id), url=url
    )


@require("operator")
async def ring_remove(request: web.Request) -> web.Response:
    shard_id = request.match_info["shard"]
    return await _change(request, f"remove {shard_id}", lambda spec: remove_shard(spec, shard_id))


@require("operator")
async def ring_reweight(request: web.Request) -> web.Response:
    shard_id = request.match_info["shard"]
    try:
        body = await _body(request)
        _fields(body, {"weight"}, {"weight"})
    except Refused as refused:
        return _answer(refused)
    weight = body["weight"]
    return await _change(
        request,
        f"reweight {shard_id} to {weight!r}",
        lambda spec: reweight_shard(spec, shard_id, weight),
    )


async def _set_control(
    request: web.Request, what: str, change: Callable[[MoverControl], MoverControl]
) -> web.Response:
    """Change the mover's control with a CAS (pause and throttle may race each other)."""
    store = _store(request)
    for _ in range(CONTROL_TRIES):
        stored = await store.controls.get(MOVER)
        current = stored.record if stored is not None and stored.record else MoverControl()
        control = change(current)
        written, _ = await store.controls.cas(
            control, stored.revision if stored is not None else 0, name=MOVER
        )
        if written:
            log.warning("presence ring: mover %s by %s", what, who(request))
            return web.json_response({"control": to_data(control)})
    return json_error(409, "conflict", "the mover's control kept changing: retry")


@require("operator")
async def ring_pause(request: web.Request) -> web.Response:
    return await _set_control(request, "paused", lambda c: MoverControl(True, c.throttle_per_s))


@require("operator")
async def ring_resume(request: web.Request) -> web.Response:
    return await _set_control(request, "resumed", lambda c: MoverControl(False, c.throttle_per_s))


@require("operator")
async def ring_throttle(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        _fields(body, {"users_per_s"}, {"users_per_s"})
    except Refused as refused:
        return _answer(refused)
    rate = body["users_per_s"]
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float))
        or not 0 < rate <= THROTTLE_MAX_PER_S
    ):
        message = f"users_per_s: a number above 0, at most {THROTTLE_MAX_PER_S:,}, not {rate!r}"
        return json_error(400, "bad_request", message, field="users_per_s")
    return await _set_control(
        request, f"throttled to {rate:g}/s", lambda c: MoverControl(c.paused, float(rate))
    )


def add_ring_routes(app: web.Application) -> None:
    """The ring routes: under /v1/ring, where no uid can shadow them."""
    app.router.add_get("/v1/ring", ring_status)
    app.router.add_post("/v1/ring/shards", ring_add)
    app.router.add_delete("/v1/ring/shards/{shard}", ring_remove)
    app.router.add_put("/v1/ring/shards/{shard}", ring_reweight)
    app.router.add_post("/v1/ring/pause", ring_pause)
    app.router.add_post("/v1/ring/resume", ring_resume)
    app.router.add_put("/v1/ring/throttle", ring_throttle)
