"""The OpenAPI documents are kept true: each names exactly the routes its app registers
(built the way launch builds it, the admin API mounted), is a valid OpenAPI 3.1 document,
and is what the app serves at /openapi.json."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from control.access import protocol
from control.api import access_document, frame_schema, scheduler_document
from control.api.frames import CLOSE_CODES
from control.launch import access_part, scheduler_part
from control.scheduler.service import create_app as bare_scheduler_app
from tests.cluster import cluster_settings

METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def registered(app: web.Application) -> set[str]:
    """``METHOD path`` for every route the app answers on purpose. Skipped: the JSON
    404/405 fallbacks (method ``*``, control/common/ops.py) and HEAD beside a GET (aiohttp
    adds it; it answers as the GET does, without a body)."""
    found: set[str] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        where = info.get("formatter") or info.get("path")
        if where is None:  # a static directory: its files, one path parameter
            where = info["prefix"].rstrip("/") + "/{filename}"
        for route in resource:
            if route.method != "*":
                found.add(f"{route.method} {where}")
    return {r for r in found if not (r.startswith("HEAD ") and "GET " + r[5:] in found)}


def documented(doc: dict[str, Any]) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def mismatch(app: web.Application, doc: dict[str, Any]) -> list[str]:
    real, described = registered(app), documented(doc)
    return [f"not in the document: {r}" for r in sorted(real - described)] + [
        f"documented but not a route: {r}" for r in sorted(described - real)
    ]


@pytest.fixture(scope="module")
def settings() -> Any:
    return cluster_settings(nodes=1)


def test_the_scheduler_document_names_every_route_and_no_other(settings: Any) -> None:
    app = scheduler_part(settings).app  # as launch builds it: the admin API mounted
    assert mismatch(app, scheduler_document()) == []
    assert {"GET /v1/endpoint", "POST /v1/ring/shards"} <= documented(scheduler_document())


def test_with_the_demo_page_the_scheduler_document_names_it(settings: Any) -> None:
    app = scheduler_part(settings, demo=True).app  # as imctl up builds it
    assert mismatch(app, scheduler_document(with_demo=True)) == []
    assert "GET /demo/app.js" in documented(scheduler_document(with_demo=True))


def test_without_the_admin_api_the_scheduler_documents_only_its_own_routes(
    settings: Any,
) -> None:
    from control.launch import Backends, scheduler_config

    b = Backends.of(settings)
    app = bare_scheduler_app(scheduler_config(settings), b.kv, b.presence)
    assert mismatch(app, scheduler_document(with_admin=False)) == []


def test_the_access_document_names_every_route_and_no_other(settings: Any) -> None:
    app = access_part(settings, "n0").app
    assert mismatch(app, access_document()) == []


def test_a_route_missing_from_the_document_is_named(settings: Any) -> None:
    app = access_part(settings, "n0").app

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/undocumented/{thing}", handler)
    doc = access_document()
    del doc["paths"]["/internal/kick"]
    assert mismatch(app, doc) == [
        "not in the document: POST /internal/kick",
        "not in the document: POST /v1/undocumented/{thing}",
    ]
    doc["paths"]["/v1/ghost"] = {"get": {"responses": {}}}
    assert mismatch(app, doc)[-1] == "documented but not a route: GET /v1/ghost"


@pytest.mark.parametrize("which", ["scheduler", "scheduler-public", "access"])
def test_the_documents_are_valid_openapi_3_1(which: str) -> None:
    doc = {
        "scheduler": scheduler_document,
        "scheduler-public": lambda: scheduler_document(with_admin=False),
        "access": access_document,
    }[which]()
    validate(doc)  # openapi-spec-validator: raises naming the first problem
    assert doc["openapi"].startswith("3.1")


def test_the_frame_schema_is_valid_and_names_the_nodes_close_codes() -> None:
    jsonschema.Draft202012Validator.check_schema(frame_schema())
    used = {
        protocol.CLOSE_IDLE,
        protocol.CLOSE_KICKED,
        protocol.CLOSE_RECONNECT,
        protocol.CLOSE_POLICY,
        protocol.CLOSE_GOING_AWAY,
    }
    assert used <= set(CLOSE_CODES)


async def test_the_apps_serve_their_documents(aiohttp_client: Any, settings: Any) -> None:
    scheduler: TestClient = await aiohttp_client(scheduler_part(settings).app)
    resp = await scheduler.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == scheduler_document()
    node: TestClient = await aiohttp_client(access_part(settings, "n0").app)
    resp = await node.get("/openapi.json")
    assert resp.status == 200 and await resp.json() == access_document()
    resp = await node.get("/schema/frames.json")
    assert resp.status == 200 and await resp.json() == frame_schema()
    # The document links the frames it does not describe itself.
    assert (await node.get("/openapi.json")).status == 200
    assert access_document()["externalDocs"]["url"] == "/schema/frames.json"
