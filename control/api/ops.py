"""The routes every process serves: /healthz, /readyz, /metrics and /openapi.json, and the
admin bearer token's security scheme (it also guards /metrics when asked to)."""

from __future__ import annotations

from typing import Any

from control.api.spec import ANY_OBJ, Paths, Schema, answers, ok, ref

ADMIN_TOKEN = "adminToken"
ADMIN_SCHEME: Schema = {
    "type": "http",
    "scheme": "bearer",
    "description": "An admin token from the config's `admin.tokens`, each with a role: "
    "`viewer` reads, `operator` also changes (drain, resize, releases). Each operation "
    "names the role it needs in `x-imctl-role`. A cluster with no tokens configured (allowed "
    "on loopback listeners only) is open: every caller is an operator.",
}


def ops_paths(ready: Schema) -> Paths:
    """``ready``: the process's own /readyz body (its details beside ``ready``)."""
    metrics_security: list[dict[str, list[str]]] = [{}, {ADMIN_TOKEN: []}]
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "Liveness: 200 while every background task of the process runs",
                "responses": {
                    "200": ok(ref("Health"), "every task runs"),
                    "503": ok(
                        {"anyOf": [ref("Health"), ref("Error")]},
                        "a background task has stopped, or too many connections",
                    ),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "Readiness: 200 when the process can serve",
                "responses": {
                    "200": ok(ready, "ready"),
                    "503": ok(
                        {"anyOf": [ready, ref("Error")]},
                        "not ready (starting, draining, stopping), or too many connections",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text exposition format)",
                "description": "Open to whoever reaches the listener, unless the config says "
                "`admin.metrics: viewer`: then a viewer or operator token is needed.",
                "security": metrics_security,
                "x-imctl-role": "viewer (only with admin.metrics: viewer)",
                "responses": answers(
                    {200: ok({"type": "string"}, "the metrics", "text/plain")},
                    {401: "admin.metrics is viewer and no valid token came"},
                ),
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": answers({200: ok(ANY_OBJ, "the OpenAPI 3.1 document")}, ()),
            }
        },
    }


def ready_body(**details: Schema) -> Schema:
    body: dict[str, Any] = {"type": "object", "required": ["ready"]}
    body["properties"] = {"ready": {"type": "boolean"}, **details}
    return body
