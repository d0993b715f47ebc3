"""The admin API's role check: one ``TokenTable.refusal`` (constant time) per request,
over grants built once when the app is created."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from control.admin.config import AdminConfig
from control.common.auth import Role, bearer
from control.common.ops import Handler, guarded, json_error

ADMIN = web.AppKey("admin", AdminConfig)


def require(role: Role) -> Callable[[Handler], Any]:
    """A handler for callers holding ``role`` (or a higher one); every failure, the role
    check's included, is a JSON answer (guarded)."""

    def wrap(handler: Handler) -> Any:
        @guarded
        async def checked(request: web.Request) -> web.StreamResponse:
            refused = request.app[ADMIN].grants.refusal(request.headers.get("Authorization"), role)
            if refused is not None:
                return json_error(*refused)
            return await handler(request)

        return checked

    return wrap


def who(request: web.Request) -> str:
    """The name of the grant the request came with, for audit records and logs."""
    token = bearer(request.headers.get("Authorization"))
    grant = request.app[ADMIN].grants.grant_of(token) if token is not None else None
    return grant.name if grant is not None else "anonymous (open admin API)"
