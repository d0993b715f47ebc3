"""The building blocks of the OpenAPI documents: shared component schemas, the error shape,
and small constructors for operations, parameters, bodies and answers. Pure data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Schema = dict[str, Any]
Operation = dict[str, Any]
Paths = dict[str, dict[str, Operation]]

OPENAPI_VERSION = "3.1.0"
FRAMES_PATH = "/schema/frames.json"  # where an access node serves the frame schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: Iterable[str] = (), extra: bool = True, **properties: Schema) -> Schema:
    """A JSON object schema; ``extra``: other properties allowed (answers may grow)."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    req = list(required)
    if req:
        schema["required"] = req
    if not extra:
        schema["additionalProperties"] = False
    return schema


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
STRS: Schema = {"type": "array", "items": STR}
ANY_OBJ: Schema = {"type": "object"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


# -- the components every document shares -----------------------------------------------------

ERROR = obj(
    ["error", "message"],
    error={
        **STR,
        "description": "a stable code: bad_request, unauthorized, forbidden, not_found, "
        "conflict, exists, rate_limited, no_capacity, unavailable, too_many_connections, ...",
    },
    message={**STR, "description": "what is wrong, for a person"},
    field={**STR, "description": "the input the message is about (400)"},
    reason={**STR, "description": "why a credential was refused (401/403 of /v1/endpoint)"},
    retry_after={**INT, "description": "seconds; also sent as the Retry-After header"},
    problems={**STRS, "description": "every problem found, when there are several"},
    revision={**INT, "description": "the current revision (409 of a compare-and-swap)"},
    presence={"const": "unknown", "description": "the user's presence shard is down"},
)

HEALTH = obj(
    ["ok", "tasks"],
    ok=BOOL,
    tasks={"type": "object", "additionalProperties": BOOL, "description": "task: running"},
)
READY = obj(["ready"], ready=BOOL)

SCHEMAS: dict[str, Schema] = {"Error": ERROR, "Health": HEALTH, "Ready": READY}

RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}

# Why each status is answered, when an operation does not say more.
_WHY = {
    400: "bad input: the message names what is wrong (`field`, or every problem in `problems`)",
    401: "no bearer token, or an unknown one",
    403: "the token's role may not do this",
    404: "no such thing",
    409: "a compare-and-swap lost: read again and retry",
    429: "too many requests from this address",
    503: "unavailable now (a backend, capacity, or too many connections from this address "
    "or in this process); Retry-After may say when to ask again",
}


def error(status: int, why: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": why or _WHY.get(status, "refused"),
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if status in (429, 503):
        answer["headers"] = RETRY_AFTER
    return answer


def ok(schema: Schema, why: str = "done", media: str = "application/json") -> dict[str, Any]:
    return {"description": why, "content": {media: {"schema": schema}}}


def answers(
    success: Mapping[int, dict[str, Any]], errors: Mapping[int, str | None] | Iterable[int]
) -> dict[str, dict[str, Any]]:
    """The ``responses`` of an operation: its successes and its JSON errors (every process
    may answer 503 when its connection guard is full, so that one is always there)."""
    out = {str(code): answer for code, answer in success.items()}
    why = errors if isinstance(errors, Mapping) else dict.fromkeys(errors)
    for code in sorted({*why, 503}):
        out[str(code)] = error(code, why.get(code))
    return out


def query(name: str, schema: Schema, why: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": why,
    }


def path(name: str, schema: Schema, why: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": why}


def body(schema: Schema, required: bool = True, why: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "required": required,
        "content": {"application/json": {"schema": schema}},
    }
    if why:
        out["description"] = why
    return out


def document(
    title: str,
    description: str,
    paths: Paths,
    security: Mapping[str, Schema],
    schemas: Mapping[str, Schema] | None = None,
) -> dict[str, Any]:
    """A whole OpenAPI 3.1 document over ``paths`` with the shared schemas."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **(schemas or {})},
            "securitySchemes": dict(security),
        },
    }
