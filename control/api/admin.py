"""The admin API (control/admin/), mounted into the scheduler's app: nodes, explain,
presence and the status cluster's ring (gray releases: gray.py). Every operation names the role it
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

LOOKUP_MAX = 10_000  # control/admin/presence.py's bound (the admin layer is above this one)
REASON_MAX = 1000


def admin_op(
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
SCHEMAS: dict[str, Schema] = {
    "NodeRow": NODE_ROW,
    "Device": DEVICE,
    "RingSpec": RING_SPEC,
    "MoverControl": CONTROL,
}

_UID = path("uid", {**STR, "maxLength": MAX_UID}, "a uid")
RELEASE_NAME = path("name", STR, f"a release name ({NAME_PATTERN})")
_SHARD = path("shard", STR, "a shard id")
_NODE = path("node", STR, "an access node id")
DRY_RUN_PARAM = query(
    "dry_run", {"enum": ["0", "1", "true", "false"]}, "1: answer what would change"
)
BAD = "bad input: `field` or `problems` says what"
_NO_RING = "no readable ring stored yet, or a backend is down"


def _nodes() -> Paths:
    return {
        "/v1/nodes": {
            "get": admin_op(
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
            "get": admin_op(
                "viewer",
                "explain",
                "nodes",
                "What /v1/endpoint would decide for this client, and why",
                {200: ok(ANY_OBJ, "the verdicts, the region and the regions tried")},
                {400: BAD},
                [*client_query("a known region"), query("ip", STR, "place by this address")],
                description="Assigns, counts and signs nothing.",
            )
        },
        "/v1/nodes/{node}/drain": {
            "post": admin_op(
                "operator",
                "drainNode",
                "nodes",
                "Drain a node: no new clients, the connected ones told to reconnect, spread",
                {200: ok(obj(["node", "draining"], node=STR, draining=BOOL, over_s=NUM))},
                {400: BAD, 404: "no such node in the registry"},
                [_NODE],
                body(
                    obj(over_s={**NUM, "minimum": 0, "maximum": DRAIN_MAX_S}),
                    required=False,
                ),
            ),
            "delete": admin_op(
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
            "post": admin_op(
                "operator",
                "rebalance",
                "nodes",
                "Shed connections from hot nodes until max/mean is at most until_ratio",
                {200: ok(obj(["rebalance"], rebalance=BOOL, max_rate=NUM, until_ratio=NUM))},
                {400: BAD},
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
            "get": admin_op(
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
            "post": admin_op(
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
                {400: BAD},
                request=body(
                    obj(
                        ["uids"],
                        uids={**STRS, "minItems": 1, "maxItems": LOOKUP_MAX},
                    )
                ),
            )
        },
        "/v1/presence/count": {
            "get": admin_op(
                "viewer",
                "presenceCount",
                "presence",
                "Exact online counts, in all or by a dimension",
                {200: ok(obj(["total"], total=INT, by=STR, counts=ANY_OBJ))},
                {400: BAD},
                [query("by", {"enum": ["region", "node", "platform"]}, "count by this")],
            )
        },
        "/v1/presence/status": {
            "get": admin_op(
                "viewer",
                "presenceStatus",
                "presence",
                "The presence engine (embedded, ring or redis-cluster), its members and health",
                {
                    200: ok(
                        obj(
                            ["engine", "healthy", "members"],
                            engine=STR,
                            healthy={"type": "boolean"},
                            members={"type": "array", "items": ANY_OBJ},
                        )
                    )
                },
                {503: "the engine could not be asked"},
            )
        },
        "/v1/presence/events": {
            "get": admin_op(
                "viewer",
                "presenceEvents",
                "presence",
                "Online, offline and status changes as they happen (one JSON object a line)",
                {
                    200: ok(
                        STR, "a stream; a blank line every 10 s while quiet", "application/x-ndjson"
                    )
                },
                {400: BAD, 503: "too many tails open (scheduler.max_event_tails), or a backend"},
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
        400: BAD,
        404: "no such shard",
        409: "the ring is migrating, or changed meanwhile",
        503: "the new shard does not answer; " + _NO_RING,
    }
    control = {200: ok(obj(["control"], control=ref("MoverControl")))}
    return {
        "/v1/ring": {
            "get": admin_op(
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
            "post": admin_op(
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
            "delete": admin_op(
                "operator",
                "ringRemove",
                "ring",
                "Remove a shard (its users move out first)",
                changed,
                refused,
                [_SHARD],
            ),
            "put": admin_op(
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
            "post": admin_op(
                "operator", "ringPause", "ring", "Hold the migration", control, {409: None}
            )
        },
        "/v1/ring/resume": {
            "post": admin_op(
                "operator", "ringResume", "ring", "Continue the migration", control, {409: None}
            )
        },
        "/v1/ring/throttle": {
            "put": admin_op(
                "operator",
                "ringThrottle",
                "ring",
                "The mover's speed limit in users per second",
                control,
                {400: BAD, 409: None},
                request=body(obj(["users_per_s"], users_per_s={**NUM, "exclusiveMinimum": 0})),
            )
        },
    }


def admin_paths() -> Paths:
    return {**_nodes(), **_presence(), **_ring()}
