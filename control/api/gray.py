"""The admin API's gray releases (control/admin/gray.py): create, apply, list, status, the
verbs, history, delete and propagation."""

from __future__ import annotations

from control.api.admin import (
    BAD,
    DRY_RUN_PARAM,
    REASON,
    RELEASE_NAME,
    REVISION,
    admin_op,
)
from control.api.spec import (
    ANY_OBJ,
    BOOL,
    INT,
    NUM,
    STR,
    STRS,
    Paths,
    Schema,
    body,
    obj,
    ok,
    path,
    query,
    ref,
)
from control.gray.model import NAME_PATTERN
from control.gray.verbs import VERB_ARGS

HISTORY_MAX = 1000  # control/admin/gray.py's bound

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

SCHEMAS: dict[str, Schema] = {"Release": RELEASE, "ReleaseWritten": WRITTEN, "DryRun": DRY_RUN}


def gray_paths() -> Paths:
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
            "get": admin_op(
                "viewer",
                "grayPropagation",
                "gray",
                "Per release: the schedulers serving its current revision and those lagging",
                {200: ok(ANY_OBJ)},
                {},
            )
        },
        "/v1/gray/releases": {
            "get": admin_op(
                "viewer",
                "listReleases",
                "gray",
                "Every release by name",
                {200: ok(obj(["releases"], releases={"type": "array", "items": ANY_OBJ}))},
                {},
            ),
            "post": admin_op(
                "operator",
                "createRelease",
                "gray",
                "Create a release",
                {201: written, 200: dry},
                {400: BAD, 409: "a release of that name exists (`exists`)"},
                [DRY_RUN_PARAM],
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
            "get": admin_op(
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
                {400: BAD, 404: "no such release"},
                [RELEASE_NAME],
            ),
            "put": admin_op(
                "operator",
                "applyRelease",
                "gray",
                "Replace a release's rules (compare-and-swap on the revision)",
                {200: either},
                {400: BAD, 404: "no such release", 409: "the release changed meanwhile"},
                [RELEASE_NAME, DRY_RUN_PARAM],
                body(obj(["release"], release=ANY_OBJ, revision=REVISION, reason=REASON)),
            ),
            "delete": admin_op(
                "operator",
                "deleteRelease",
                "gray",
                "Delete a release (its audit trail stays)",
                {200: ok(obj(["deleted", "revision"], deleted=STR, revision=INT))},
                {400: BAD, 404: "no such release", 409: "the release changed meanwhile"},
                [RELEASE_NAME, query("revision", {**INT, "minimum": 1}, "the revision read")],
                body(obj(reason=REASON), required=False),
            ),
        },
        "/v1/gray/releases/{name}/history": {
            "get": admin_op(
                "viewer",
                "releaseHistory",
                "gray",
                "A release's audit records, oldest first",
                {200: ok(obj(["name", "history"], name=STR, history={"type": "array"}))},
                {400: BAD, 404: "no such release"},
                [
                    RELEASE_NAME,
                    query("limit", {**INT, "minimum": 1, "maximum": HISTORY_MAX}, "at most"),
                ],
            )
        },
        "/v1/gray/releases/{name}/{verb}": {
            "post": admin_op(
                "operator",
                "releaseVerb",
                "gray",
                "set-percent {percent}, step, pause, resume, promote, rollback {over_s?}",
                {200: written},
                {
                    400: BAD,
                    404: "no such release, or no such verb",
                    409: "the release changed meanwhile, or its state forbids the verb",
                },
                [RELEASE_NAME, path("verb", {"enum": sorted(VERB_ARGS)}, "what to do")],
                body(verb_body, required=False),
            ),
        },
    }
