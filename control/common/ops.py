"""What every process's HTTP edge shares: the operator endpoints (/healthz, /readyz,
/metrics), JSON errors (including for unknown paths and methods) and handler guarding.

Liveness means every supervised task is still running; readiness is the process's own
answer to "can I serve?"; metrics come from the process's own registry.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from control.common.auth import TokenTable
from control.common.errors import BackendUnavailable
from control.common.tasks import Supervisor

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, Mapping[str, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def lifecycle(component: Component) -> Callable[[web.Application], AsyncIterator[None]]:
    """An app's cleanup context for one component: start it, stop it on the way out. Its
    backends are opened before and closed after by their owner (launch's Backends)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        await component.start()
        yield
        await component.stop()

    return run


def json_error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The error answer of every process: ``{"error", "message", ...}``; ``retry_after``
    also goes out as the Retry-After header."""
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else None
    return web.json_response(
        {"error": code, "message": message, **extra}, status=status, headers=headers
    )


# The app's metrics registry, for process-level collectors (common/guard.py) to join.
METRICS = web.AppKey("metrics", CollectorRegistry)


def add_ops_routes(
    app: web.Application,
    supervisor: Supervisor,
    registry: CollectorRegistry,
    readiness: Readiness,
    readers: TokenTable | None = None,
) -> None:
    """``readers``: when given, /metrics needs a viewer (or operator) admin token."""
    app[METRICS] = registry

    async def healthz(request: web.Request) -> web.Response:
        alive = supervisor.alive()
        ok = all(alive.values())
        return web.json_response({"ok": ok, "tasks": alive}, status=200 if ok else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready, details = readiness()
        return web.json_response({"ready": ready, **details}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        if readers is not None:
            refused = readers.refusal(request.headers.get("Authorization"), "viewer")
            if refused is not None:
                response = json_error(*refused)
                if refused[0] == 401:
                    response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
                return response
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


def internal_error(request: web.Request) -> web.Response:
    """A JSON 500 for a failure nobody planned for, with the traceback in the log."""
    log.exception("unhandled error on %s %s", request.method, request.path)
    return json_error(500, "internal", "internal error; see the process log")


def guarded(handler: Handler) -> Handler:
    """Every failure is a JSON body with a reason; nothing leaks a traceback. Per route
    rather than as an app middleware, which cost every endpoint request a few us."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        except BackendUnavailable as exc:  # etcd or Redis away: worth retrying, not a bug
            return json_error(503, "unavailable", str(exc), retry_after=1)
        except Exception:
            return internal_error(request)

    return run


def add_json_fallbacks(app: web.Application) -> None:
    """Unknown paths get a JSON 404 and known paths a JSON 405 with ``Allow``, through
    routes of their own. Call after every other route is added."""
    for resource in list(app.router.resources()):
        methods = {route.method for route in resource}
        if not isinstance(resource, web.Resource) or "*" in methods:
            continue
        allow = ",".join(sorted(methods))

        async def not_allowed(request: web.Request, allow: str = allow) -> web.Response:
            response = json_error(405, "method_not_allowed", f"allowed: {allow}")
            response.headers["Allow"] = allow
            return response

        resource.add_route("*", not_allowed)

    async def not_found(request: web.Request) -> web.Response:
        path = request.path if len(request.path) <= 100 else request.path[:100] + "..."
        return json_error(404, "not_found", f"no such path: {path}")

    app.router.add_route("*", "/{tail:.*}", not_found)
