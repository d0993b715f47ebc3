"""The documents each app serves: the scheduler's (public API, operations, and the admin
API when it is mounted) and the access node's. One source of truth per app, built from the
shared parts in spec.py; ``tests/http/test_openapi.py`` holds each to the routes its app
really registers."""

from __future__ import annotations

from typing import Any

from control.api import access, admin, gray, public
from control.api.ops import ADMIN_SCHEME, ADMIN_TOKEN, ops_paths, ready_body
from control.api.spec import BOOL, FRAMES_PATH, INT, STR, document

SCHEDULER_READY = ready_body(backend=STR, stopping=BOOL)
ACCESS_READY = ready_body(state=STR, connections=INT)


def scheduler_document(with_admin: bool = True, with_demo: bool = False) -> dict[str, Any]:
    paths = {**public.public_paths(), **ops_paths(SCHEDULER_READY)}
    if with_demo:
        paths |= public.demo_paths()
    security = {public.CLIENT_TOKEN: public.CLIENT_SCHEME, ADMIN_TOKEN: ADMIN_SCHEME}
    schemas = dict(public.SCHEMAS)
    if with_admin:
        paths |= admin.admin_paths() | gray.gray_paths()
        schemas |= admin.SCHEMAS | gray.SCHEMAS
    return document(
        "imctl scheduler",
        "Where clients connect (`/v1/endpoint`), the admin API operators use (`imctl` talks "
        "to it), and the process's operations endpoints. Errors are JSON: "
        "`{error, message, ...}` (components/schemas/Error).",
        paths,
        security,
        schemas,
    )


def access_document() -> dict[str, Any]:
    paths = {**access.access_paths(), **ops_paths(ACCESS_READY)}
    security = {
        access.TICKET: access.TICKET_SCHEME,
        access.INTERNAL_TOKEN: access.INTERNAL_SCHEME,
        ADMIN_TOKEN: ADMIN_SCHEME,
    }
    doc = document(
        "imctl access node",
        "An access node holds clients' WebSockets (`/ws`, frames described by the JSON "
        f"Schema at `{FRAMES_PATH}`), takes pushes from the rest of the system on its "
        "internal API, and serves the process's operations endpoints.",
        paths,
        security,
    )
    doc["externalDocs"] = {"description": "WebSocket frames (JSON Schema)", "url": FRAMES_PATH}
    return doc
