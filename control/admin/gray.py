"""``/v1/gray/releases``: gray releases for SREs: create, apply, list, status, the verbs
(set-percent, step, pause, resume, promote, rollback), history and delete.

A change reads the stored release, computes the next one with the pure rules of
control/gray/verbs.py and writes it with the release store's compare-and-swap on the
revision read (or the one the caller names): a lost race is a 409 naming the current
revision, and every write leaves an audit record (who: the admin token's name). A change
that changes nothing writes nothing. ``?dry_run=1`` answers the field diff and the share of
a sample of users the change would move (control/gray/preview.py), and writes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from control.admin.auth import ADMIN, require, who
from control.common.errors import BadRequest, ImctlError, NotJson, parse_json
from control.common.ops import Handler, json_error
from control.common.records import to_data
from control.common.schema import build
from control.gray.audit import diff
from control.gray.model import NAME_PATTERN, Release
from control.gray.preview import moves
from control.gray.stable import as_data as stable_data
from control.gray.stepper import ADVANCE, ANALYSIS, STEPPER
from control.gray.store import (
    ReleaseConflict,
    ReleaseExists,
    ReleaseMissing,
    ReleaseStore,
    StoredRelease,
)
from control.gray.track import track_loads
from control.gray.verbs import (
    VERB_ARGS,
    VerbRefused,
    check_apply,
    check_create,
    step_position,
    transition,
)
from control.scheduler.served import propagation, served_records
from control.scheduler.state import ENGINE, KV, PRESENCE

log = logging.getLogger(__name__)

# A store set here is used instead of one over the scheduler's key-value store (tests).
RELEASES = web.AppKey("gray_releases", ReleaseStore)
REASON_MAX = 1000  # characters of an operator's "why", kept in every audit record
HISTORY_MAX = 1000
_NAME_RE = re.compile(NAME_PATTERN)
_COMMON = frozenset({"revision", "reason"})


def _store(request: web.Request) -> ReleaseStore:
    injected = request.app.get(RELEASES)
    if injected is not None:
        return injected
    return ReleaseStore(request.app[KV], request.app[ADMIN].prefix)


def _bad(*problems: str) -> VerbRefused:
    return VerbRefused(400, "bad_request", "; ".join(problems), problems)


def answering(handler: Handler) -> Handler:
    """Refusals (bad input, a state that forbids the change, a lost race, no such release)
    as their JSON answers; nothing was written for any of them."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except VerbRefused as exc:
            extra: dict[str, Any] = dict(exc.extra)
            if exc.problems:
                extra["problems"] = list(exc.problems)
            return json_error(exc.status, exc.code, exc.message, **extra)
        except ReleaseConflict as exc:
            return json_error(409, "conflict", str(exc), revision=exc.current)
        except ReleaseExists as exc:
            return json_error(409, "exists", str(exc), revision=exc.current)
        except ReleaseMissing as exc:
            return json_error(404, "not_found", str(exc))
        except BadRequest as exc:  # the store's own last check of what it is given
            return json_error(400, "bad_request", str(exc), field=exc.field)

    return run


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not _NAME_RE.fullmatch(name):
        raise _bad(f"name: {name[:70]!r} is not a release name ({NAME_PATTERN})")
    return name


def _dry_run(request: web.Request) -> bool:
    value = request.query.get("dry_run", "0").lower()
    if value not in ("0", "1", "true", "false"):
        raise _bad(f"dry_run: 1 or 0, not {value[:20]!r}")
    return value in ("1", "true")


async def _json(request: web.Request) -> Any:
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        return {}
    try:
        return parse_json(raw)
    except NotJson as exc:
        raise _bad(f"body: not JSON: {exc}") from None


def _checked(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """A JSON object with only ``allowed`` keys; ``revision`` and ``reason`` checked."""
    if not isinstance(body, dict):
        raise _bad("body: a JSON object")
    problems = [f"{k}: unknown field" for k in sorted(set(body) - allowed)]
    revision = body.get("revision")
    if revision is not None and (
        isinstance(revision, bool) or not isinstance(revision, int) or revision < 1
    ):
        problems.append(f"revision: a revision number (1 or more), not {revision!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > REASON_MAX:
        problems.append(f"reason: text of at most {REASON_MAX} characters")
    if problems:
        raise _bad(*problems)
    return body


async def _body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    return _checked(await _json(request), allowed)


def _release(data: Any, name: str | None = None) -> Release:
    """A release from plain data, every problem at once (400)."""
    if name is not None and isinstance(data, dict) and "name" not in data:
        data = {**data, "name": name}
    problems: list[str] = []
    release = build(Release, data, "release", problems)
    if problems:
        count = f"{len(problems)} problem{'s' * (len(problems) != 1)}"
        raise VerbRefused(400, "bad_request", f"the release has {count}", tuple(problems))
    return release


async def _current(store: ReleaseStore, name: str, revision: int | None) -> StoredRelease:
    """The stored release, at ``revision`` when the caller names one (409 when not)."""
    stored = await store.get(name)
    if stored is None:
        raise ReleaseMissing(name)
    if revision is not None and revision != stored.revision:
        raise ReleaseConflict(name, revision, stored.revision)
    return stored


def _answer(stored: StoredRelease, *, changed: bool = True, status: int = 200) -> web.Response:
    body = {"release": to_data(stored.release), "revision": stored.revision, "changed": changed}
    return web.json_response(body, status=status)


async def _preview(before: Release | None, after: Release) -> web.Response:
    # 10,000 verdicts take tens of ms: not on the serving loop.
    moved = await asyncio.to_thread(moves, before, after)
    changes = {k: list(v) for k, v in diff(before, after).items()}
    return web.json_response({"dry_run": True, "diff": changes, "moves": moved.as_data()})


def _summary(stored: StoredRelease) -> dict[str, Any]:
    r = stored.release
    return {
        "name": r.name,
        "state": r.state,
        "percent": r.percent,
        "target": to_data(r.target),
        "revision": stored.revision,
    }


@require("viewer")
@answering
async def list_releases(request: web.Request) -> web.Response:
    stored = await _store(request).list()
    return web.json_response({"releases": [_summary(s) for s in stored]})


@require("viewer")
@answering
async def release_status(request: web.Request) -> web.Response:
    name = _name(request)
    store = _store(request)
    stored = await _current(store, name, None)
    release = stored.release
    trail = await store.history(name, HISTORY_MAX)
    judged = [r for r in trail if r.by == STEPPER and r.action in (ADVANCE, ANALYSIS)]
    return web.json_response(
        {
            "release": to_data(release),
            "revision": stored.revision,
            "state": release.state,
            "step": dict(step_position(release)),
            "last_analysis": to_data(judged[-1]) if judged else None,
            "tracks": await _tracks(request, release),
        }
    )


async def _tracks(request: web.Request, release: Release) -> dict[str, Any] | None:
    """Nodes, connections (their load reports) and online entries (presence counters by
    node, exact) on each track, from this scheduler's snapshot; None without one."""
    engine = request.app.get(ENGINE)
    if engine is None:
        return None
    presence = request.app.get(PRESENCE)
    online: dict[str, int] | None = None
    if presence is not None:
        try:
            online = dict((await presence.counts()).by_node)
        except ImctlError as exc:  # a shard away: the load reports still answer
            log.warning("gray status: presence counts unavailable: %s", exc)
    snap = engine.snapshot
    loads = track_loads(release, snap.nodes.values(), snap.stable, online)
    return {
        "stable_target": None if snap.stable is None else to_data(snap.stable),
        **{track: to_data(load) for track, load in loads.items()},
    }


@require("viewer")
@answering
async def release_history(request: web.Request) -> web.Response:
    name = _name(request)
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= HISTORY_MAX:
        raise _bad(f"limit: a whole number from 1 to {HISTORY_MAX}")
    store = _store(request)
    records = await store.history(name, int(raw))
    if not records and await store.get(name) is None:
        raise ReleaseMissing(name)
    return web.json_response({"name": name, "history": [to_data(r) for r in records]})


@require("operator")
@answering
async def create_release(request: web.Request) -> web.Response:
    """The body is one release, or ``{"release": {...}, "reason": "..."}``."""
    dry = _dry_run(request)
    body = await _json(request)
    reason = ""
    if isinstance(body, dict) and "release" in body:  # a Release has no "release" field
        wrapper = _checked(body, frozenset({"release", "reason"}))
        body, reason = wrapper["release"], wrapper.get("reason", "")
    release = _release(body)
    check_create(release)
    store = _store(request)
    if dry:
        existing = await store.get(release.name)
        if existing is not None:
            raise ReleaseExists(release.name, existing.revision)
        return await _preview(None, release)
    stored = await store.create(release, by=who(request), why=reason)
    log.warning("gray: release %s created by %s (%s)", release.name, who(request), reason or "-")
    return _answer(stored, status=201)


async def _change(
    request: web.Request,
    stored: StoredRelease,
    new: Release,
    action: str,
    reason: str,
    figures: Mapping[str, Any] | None = None,
) -> tuple[StoredRelease, bool]:
    """CAS ``new`` over ``stored`` (nothing written when it changes nothing)."""
    if new == stored.release:
        return stored, False
    by = who(request)
    written = await _store(request).change(
        new.name, stored.revision, new, action=action, by=by, why=reason, figures=figures
    )
    log.warning(
        "gray: %s %s by %s: revision %d -> %d (%s)",
        action,
        new.name,
        by,
        stored.revision,
        written.revision,
        reason or "-",
    )
    return written, True


async def _write(
    request: web.Request,
    stored: StoredRelease,
    new: Release,
    action: str,
    reason: str,
    figures: Mapping[str, Any] | None = None,
) -> web.Response:
    written, changed = await _change(request, stored, new, action, reason, figures)
    return _answer(written, changed=changed)


@require("operator")
@answering
async def apply_release(request: web.Request) -> web.Response:
    """``{"release": {...}, "revision"?, "reason"?}``: replace the release's rules."""
    name = _name(request)
    dry = _dry_run(request)
    body = await _body(request, _COMMON | {"release"})
    if "release" not in body:
        raise _bad("release: required")
    new = _release(body["release"], name)
    stored = await _current(_store(request), name, body.get("revision"))
    check_apply(stored.release, new)
    if dry:
        return await _preview(stored.release, new)
    return await _write(request, stored, new, "apply", body.get("reason", ""))


@require("operator")
@answering
async def release_verb(request: web.Request) -> web.Response:
    name = _name(request)
    verb = request.match_info["verb"]
    args = VERB_ARGS.get(verb)
    if args is None:
        raise VerbRefused(404, "not_found", f"no verb {verb!r} (one of: {', '.join(VERB_ARGS)})")
    body = await _body(request, _COMMON | args)
    store = _store(request)
    stored = await _current(store, name, body.get("revision"))
    step = transition(stored.release, verb, {k: v for k, v in body.items() if k in args})
    reason = body.get("reason", "")
    written, changed = await _change(request, stored, step.release, verb, reason, step.figures)
    if verb != "promote":
        return _answer(written, changed=changed)
    # Promoted; now its target becomes the stable version (a crash between the two writes
    # is finished by the controller's stepper: control/gray/stable.py).
    handed = await store.stable.hand_over(
        written.release, written.revision, by=who(request), why=reason
    )
    log.warning("gray: the stable version is now %s (from %s)", handed.stable.target, name)
    body = {"release": to_data(written.release), "revision": written.revision}
    return web.json_response({**body, "changed": changed, "stable": stable_data(handed)})


@require("operator")
@answering
async def delete_release(request: web.Request) -> web.Response:
    """``?revision=N`` (else the current one); an optional body ``{"reason"}``."""
    name = _name(request)
    raw = request.query.get("revision")
    if raw is not None and (not raw.isdigit() or int(raw) < 1):
        raise _bad(f"revision: a revision number (1 or more), not {raw[:20]!r}")
    body = await _body(request, frozenset({"reason"}))
    store = _store(request)
    stored = await _current(store, name, int(raw) if raw is not None else None)
    reason = body.get("reason", "")
    await store.delete(name, stored.revision, by=who(request), why=reason)
    log.warning("gray: release %s deleted by %s (%s)", name, who(request), reason or "-")
    return web.json_response({"deleted": name, "revision": stored.revision})


@require("viewer")
@answering
async def release_propagation(request: web.Request) -> web.Response:
    """Which release revision each scheduler serves; per release, who serves the current
    one and who lags."""
    stored = await _store(request).list()
    kv = request.app.get(KV)  # None: an admin app without a scheduler (a test's)
    records = {} if kv is None else (await served_records(kv, request.app[ADMIN].prefix).list())[0]
    current = {s.release.name: s.revision for s in stored}
    return web.json_response(propagation(current, records.values()))


def add_gray_routes(app: web.Application) -> None:
    app.router.add_get("/v1/gray/propagation", release_propagation)
    app.router.add_get("/v1/gray/releases", list_releases)
    app.router.add_post("/v1/gray/releases", create_release)
    app.router.add_get("/v1/gray/releases/{name}", release_status)
    app.router.add_put("/v1/gray/releases/{name}", apply_release)
    app.router.add_delete("/v1/gray/releases/{name}", delete_release)
    app.router.add_get("/v1/gray/releases/{name}/history", release_history)
    app.router.add_post("/v1/gray/releases/{name}/{verb}", release_verb)
