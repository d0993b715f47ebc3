"""The admin API (control/admin/), mounted into the scheduler's app: nodes, explain,
presence, the status cluster's ring and gray releases. Every operation names the role it
needs (``x-imctl-role``); viewers read, operators also change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from control.api.ops import ADMIN_TOKEN
from control.api.public import client_query
from control.api.spec import (
    ANY_OBJ,
    BOOL,
    INT,
    NUM,
    STR,
    STRS,
    Operation,
    Paths,
    Schema,
    answers,
    body,
    nullable,
    obj,
    ok,
    path,
    query,
    ref,
)
from control.common.registry import DRAIN_MAX_S
from control.common.wire import EVENTS_COUNT_MAX, MAX_UID
from control.gray.model import NAME_PATTERN
from control.gray.verbs import VERB_ARGS

LOOKUP_MAX = 10_000  # control/admin/presence.py's bound (the admin layer is above this one)
HISTORY_MAX = 1000
REASON_MAX = 1000


def _op(
    role: Literal["viewer", "operator"],
    op_id: str,
    tag: str,
    summary: str,
    success: Mapping[int, dict[str, Any]],
    errors: Mapping[int, str | None],
    parameters: list[dict[str, Any]] | None = None,
    request: dict[str, Any] | None = None,
    description: str = "",
) -> Operation:
    refusals: dict[int, str | None] = {401: None, **errors}
    if role == "operator":
        refusals[403] = "a viewer token: this needs the operator role"
    op: Operation = {
        "operationId": op_id,
        "tags": [tag],
        "summary": summary,
        "security": [{ADMIN_TOKEN: []}],
        "x-imctl-role": role,
        "responses": answers(success, refusals),
    }
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if request is not None:
        op["requestBody"] = request
    return op


# -- schemas -----------------------------------------------------------------------------------

REASON: Schema = {**STR, "maxLength": REASON_MAX, "description": "why, for the audit record"}
REVISION: Schema = {**INT, "minimum": 1, "description": "the revision read (else the current)"}

NODE_ROW = obj(
    ["id", "endpoint", "region", "zone", "state", "capacity", "conns"],
    id=STR,
    endpoint=STR,
    region=STR,
    zone=STR,
    pool=STR,
    version=STR,
    capacity=INT,
    conns=INT,
    state={**STR, "description": "up or draining"},
    weight=NUM,
    pending=INT,
    load=nullable(NUM),
    static=BOOL,
)
DEVICE = obj(["device", "node", "conn", "status"], device=STR, node=STR, conn=STR, status=STR)
RING_SPEC = obj(
    ["version", "shards", "state"],
    version=INT,
    shards={"type": "array", "items": obj(["id", "url", "weight"], id=STR, url=STR, weight=INT)},
    previous={"type": "array", "items": ANY_OBJ},
    state={**STR, "description": "stable or migrating"},
)
CONTROL = obj(["paused", "throttle_per_s"], paused=BOOL, throttle_per_s=nullable(NUM))
RELEASE = obj(
    ["name", "target"],
    name={**STR, "pattern": f"^{NAME_PATTERN}$"},
    target=obj(pool=STR, version=STR),
    percent={**NUM, "minimum": 0, "maximum": 100},
    include=obj(uids=STRS, regions=STRS, platforms=STRS, app_versions=STRS),
    exclude=obj(uids=STRS),
    salt=STR,
    steps={"type": "array", "items": NUM},
    step_interval_s=NUM,
    analysis=ANY_OBJ,
    state={"enum": ["draft", "running", "paused", "promoted", "rolled_back"]},
)
RELEASE.update(description="a gray release (README: Gray releases); every problem is a 400")
WRITTEN = obj(["release", "revision"], release=ref("Release"), revision=INT, changed=BOOL)
DRY_RUN = obj(["dry_run", "diff", "moves"], dry_run={"const": True}, diff=ANY_OBJ, moves=ANY_OBJ)

SCHEMAS: dict[str, Schema] = {
    "NodeRow": NODE_ROW,
    "Device": DEVICE,
    "RingSpec": RING_SPEC,
    "MoverControl": CONTROL,
    "Release": RELEASE,
    "ReleaseWritten": WRITTEN,
    "DryRun": DRY_RUN,
}

_UID = path("uid", {**STR, "maxLength": MAX_UID}, "a uid")
_NAME = path("name", STR, f"a release name ({NAME_PATTERN})")
_SHARD = path("shard", STR, "a shard id")
_NODE = path("node", STR, "an access node id")
_DRY = query("dry_run", {"enum": ["0", "1", "true", "false"]}, "1: answer what would change")
_BAD = "bad input: `field` or `problems` says what"
_NO_RING = "no readable ring stored yet, or a backend is down"


def _nodes() -> Paths:
    return {
        "/v1/nodes": {
            "get": _op(
                "viewer",
                "listNodes",
                "nodes",
                "Nodes, their load, this scheduler's pending counts, releases",
                {
                    200: ok(
                        obj(
                            ["nodes"],
                            cluster=STR,
                            snapshot=INT,
                            held=BOOL,
                            message=nullable(STR),
                            releases=STRS,
                            nodes={"type": "array", "items": ref("NodeRow")},
                        )
                    )
                },
                {},
            )
        },
        "/v1/explain": {
            "get": _op(
                "viewer",
                "explain",
                "nodes",
                "What /v1/endpoint would decide for this client, and why",
                {200: ok(ANY_OBJ, "the verdicts, the region and the regions tried")},
                {400: _BAD},
                [*client_query("a known region"), query("ip", STR, "place by this address")],
                description="Assigns, counts and signs nothing.",
            )
        },
        "/v1/nodes/{node}/drain": {
            "post": _op(
                "operator",
                "drainNode",
                "nodes",
                "Drain a node: no new clients, the connected ones told to reconnect, spread",
                {200: ok(obj(["node", "draining"], node=STR, draining=BOOL, over_s=NUM))},
                {400: _BAD, 404: "no such node in the registry"},
                [_NODE],
                body(
                    obj(over_s={**NUM, "minimum": 0, "maximum": DRAIN_MAX_S}),
                    required=False,
                ),
            ),
            "delete": _op(
                "operator",
                "undrainNode",
                "nodes",
                "Cancel a node's drain",
                {200: ok(obj(["node", "draining"], node=STR, draining=BOOL, was_draining=BOOL))},
                {},
                [_NODE],
            ),
        },
        "/v1/nodes/rebalance": {
            "post": _op(
                "operator",
                "rebalance",
                "nodes",
                "Shed connections from hot nodes until max/mean is at most until_ratio",
                {200: ok(obj(["rebalance"], rebalance=BOOL, max_rate=NUM, until_ratio=NUM))},
                {400: _BAD},
                request=body(
                    obj(max_rate={**NUM, "exclusiveMinimum": 0}, until_ratio={**NUM, "minimum": 1}),
                    required=False,
                ),
            )
        },
    }


def _presence() -> Paths:
    unknown = "the user's presence shard is down (`presence: unknown`), or a backend is down"
    return {
        "/v1/presence/{uid}": {
            "get": _op(
                "viewer",
                "presenceWho",
                "presence",
                "Every device of a user",
                {
                    200: ok(
                        obj(
                            ["uid", "online", "devices"],
                            uid=STR,
                            online=BOOL,
                            devices={"type": "array", "items": ref("Device")},
                        )
                    )
                },
                {400: "not a uid", 503: unknown},
                [_UID],
            )
        },
        "/v1/presence/lookup": {
            "post": _op(
                "viewer",
                "presenceLookup",
                "presence",
                "Where many users are, in one batch locate",
                {
                    200: ok(
                        obj(
                            ["online", "offline", "unknown"],
                            online={
                                "type": "object",
                                "additionalProperties": {"type": "array", "items": ANY_OBJ},
                            },
                            offline=STRS,
                            unknown=STRS,
                        )
                    )
                },
                {400: _BAD},
                request=body(
                    obj(
                        ["uids"],
                        uids={**STRS, "minItems": 1, "maxItems": LOOKUP_MAX},
                    )
                ),
            )
        },
        "/v1/presence/count": {
            "get": _op(
                "viewer",
                "presenceCount",
                "presence",
                "Exact online counts, in all or by a dimension",
                {200: ok(obj(["total"], total=INT, by=STR, counts=ANY_OBJ))},
                {400: _BAD},
                [query("by", {"enum": ["region", "node", "platform"]}, "count by this")],
            )
        },
        "/v1/presence/events": {
            "get": _op(
                "viewer",
                "presenceEvents",
                "presence",
                "Online, offline and status changes as they happen (one JSON object a line)",
                {
                    200: ok(
                        STR, "a stream; a blank line every 10 s while quiet", "application/x-ndjson"
                    )
                },
                {400: _BAD, 503: "too many tails open (scheduler.max_event_tails), or a backend"},
                [
                    query("uid", STR, "only this user's changes"),
                    query("count", {**INT, "minimum": 1, "maximum": EVENTS_COUNT_MAX}, "end after"),
                ],
                description="Without `count` the stream runs until the reader leaves.",
            )
        },
    }


def _ring() -> Paths:
    changed = {202: ok(obj(["ring"], ring=ref("RingSpec")), "the next ring, migrating")}
    refused = {
        400: _BAD,
        404: "no such shard",
        409: "the ring is migrating, or changed meanwhile",
        503: "the new shard does not answer; " + _NO_RING,
    }
    control = {200: ok(obj(["control"], control=ref("MoverControl")))}
    return {
        "/v1/ring": {
            "get": _op(
                "viewer",
                "ringStatus",
                "ring",
                "The status cluster's ring, the mover's control and progress",
                {
                    200: ok(
                        obj(
                            ["ring", "revision", "control", "progress", "moved_fraction"],
                            ring=ref("RingSpec"),
                            revision=INT,
                            control=ref("MoverControl"),
                            progress=nullable(ANY_OBJ),
                            moved_fraction=NUM,
                        )
                    )
                },
                {503: _NO_RING},
            )
        },
        "/v1/ring/shards": {
            "post": _op(
                "operator",
                "ringAdd",
                "ring",
                "Add a shard (redis://host:port/db, or embedded:ID on an embedded ring)",
                changed,
                refused,
                request=body(obj(["url"], url=STR, weight=INT, id=STR)),
            )
        },
        "/v1/ring/shards/{shard}": {
            "delete": _op(
                "operator",
                "ringRemove",
                "ring",
                "Remove a shard (its users move out first)",
                changed,
                refused,
                [_SHARD],
            ),
            "put": _op(
                "operator",
                "ringReweight",
                "ring",
                "Change a shard's weight (1-100)",
                changed,
                refused,
                [_SHARD],
                body(obj(["weight"], weight={**INT, "minimum": 1, "maximum": 100})),
            ),
        },
        "/v1/ring/pause": {
            "post": _op("operator", "ringPause", "ring", "Hold the migration", control, {409: None})
        },
        "/v1/ring/resume": {
            "post": _op(
                "operator", "ringResume", "ring", "Continue the migration", control, {409: None}
            )
        },
        "/v1/ring/throttle": {
            "put": _op(
                "operator",
                "ringThrottle",
                "ring",
                "The mover's speed limit in users per second",
                control,
                {400: _BAD, 409: None},
                request=body(obj(["users_per_s"], users_per_s={**NUM, "exclusiveMinimum": 0})),
            )
        },
    }


def _gray() -> Paths:
    written = ok(ref("ReleaseWritten"), "written (changed false: nothing to change)")
    dry = ok(ref("DryRun"), "?dry_run=1: what would change, nothing written")
    either = ok({"anyOf": [ref("ReleaseWritten"), ref("DryRun")]}, "written, or the dry run")
    verb_body = obj(
        revision=REVISION,
        reason=REASON,
        percent={**NUM, "minimum": 0, "maximum": 100, "description": "set-percent"},
        over_s={**NUM, "description": "rollback: drain the canary's clients over this"},
    )
    return {
        "/v1/gray/propagation": {
            "get": _op(
                "viewer",
                "grayPropagation",
                "gray",
                "Per release: the schedulers serving its current revision and those lagging",
                {200: ok(ANY_OBJ)},
                {},
            )
        },
        "/v1/gray/releases": {
            "get": _op(
                "viewer",
                "listReleases",
                "gray",
                "Every release by name",
                {200: ok(obj(["releases"], releases={"type": "array", "items": ANY_OBJ}))},
                {},
            ),
            "post": _op(
                "operator",
                "createRelease",
                "gray",
                "Create a release",
                {201: written, 200: dry},
                {400: _BAD, 409: "a release of that name exists (`exists`)"},
                [_DRY],
                body(
                    {
                        "anyOf": [
                            ref("Release"),
                            obj(["release"], release=ref("Release"), reason=REASON),
                        ]
                    },
                    why="one release, or {release, reason}",
                ),
            ),
        },
        "/v1/gray/releases/{name}": {
            "get": _op(
                "viewer",
                "releaseStatus",
                "gray",
                "A release, its revision and its step position",
                {
                    200: ok(
                        obj(
                            ["release", "revision", "state", "step"],
                            release=ref("Release"),
                            revision=INT,
                            state=STR,
                            step=ANY_OBJ,
                        )
                    )
                },
                {400: _BAD, 404: "no such release"},
                [_NAME],
            ),
            "put": _op(
                "operator",
                "applyRelease",
                "gray",
                "Replace a release's rules (compare-and-swap on the revision)",
                {200: either},
                {400: _BAD, 404: "no such release", 409: "the release changed meanwhile"},
                [_NAME, _DRY],
                body(obj(["release"], release=ANY_OBJ, revision=REVISION, reason=REASON)),
            ),
            "delete": _op(
                "operator",
                "deleteRelease",
                "gray",
                "Delete a release (its audit trail stays)",
                {200: ok(obj(["deleted", "revision"], deleted=STR, revision=INT))},
                {400: _BAD, 404: "no such release", 409: "the release changed meanwhile"},
                [_NAME, query("revision", {**INT, "minimum": 1}, "the revision read")],
                body(obj(reason=REASON), required=False),
            ),
        },
        "/v1/gray/releases/{name}/history": {
            "get": _op(
                "viewer",
                "releaseHistory",
                "gray",
                "A release's audit records, oldest first",
                {200: ok(obj(["name", "history"], name=STR, history={"type": "array"}))},
                {400: _BAD, 404: "no such release"},
                [_NAME, query("limit", {**INT, "minimum": 1, "maximum": HISTORY_MAX}, "at most")],
            )
        },
        "/v1/gray/releases/{name}/{verb}": {
            "post": _op(
                "operator",
                "releaseVerb",
                "gray",
                "set-percent {percent}, step, pause, resume, promote, rollback {over_s?}",
                {200: written},
                {
                    400: _BAD,
                    404: "no such release, or no such verb",
                    409: "the release changed meanwhile, or its state forbids the verb",
                },
                [_NAME, path("verb", {"enum": sorted(VERB_ARGS)}, "what to do")],
                body(verb_body, required=False),
            ),
        },
    }


def admin_paths() -> Paths:
    return {**_nodes(), **_presence(), **_ring(), **_gray()}
