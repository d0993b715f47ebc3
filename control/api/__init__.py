"""The described API: OpenAPI 3.1 documents for the scheduler (public and admin) and the
access node, and the WebSocket frames' JSON Schema, as data; and the routes that serve
them. Below the apps that serve it (scheduler, admin, access), above what it describes
with (presence's statuses, gray's names and verbs, common's bounds)."""

from control.api.documents import access_document, scheduler_document
from control.api.frames import direction_schema, frame_schema
from control.api.serve import WITH_ADMIN, add_frame_schema, add_openapi

__all__ = [
    "WITH_ADMIN",
    "access_document",
    "add_frame_schema",
    "add_openapi",
    "direction_schema",
    "frame_schema",
    "scheduler_document",
]
