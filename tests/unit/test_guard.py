"""The connection guard's decisions, its rate-limited log, its loop exception handler, and
the aiohttp surface it builds on (these fail first if an aiohttp upgrade changes it)."""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
from asyncio import selector_events

import pytest
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from control.common.guard import (
    ACCEPT_FAILED,
    Connection,
    ConnectionGuard,
    GuardedSite,
    GuardLimits,
    RateLimitedLog,
    admission,
    install_loop_handler,
    malformed_kind,
)


def test_admission_caps_per_address_before_per_process() -> None:
    assert admission(0, 0, 10, 3) is None
    assert admission(9, 2, 10, 3) is None
    assert admission(5, 3, 10, 3) == "per_address"
    assert admission(10, 0, 10, 3) == "per_process"


def test_guard_counts_pending_per_address_and_forgets_empty_ones() -> None:
    guard = ConnectionGuard(GuardLimits(max_pending=3, max_pending_per_address=2))
    assert guard.admit("10.0.0.1") and guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")
    assert guard.admit("10.0.0.2")
    assert not guard.admit("10.0.0.3")  # the process's cap
    assert guard.refused == {"per_address": 1, "per_process": 1}
    guard.release("10.0.0.1")
    guard.release("10.0.0.1")
    guard.release("10.0.0.2")
    assert guard.pending == 0 and guard.by_address == {}


def test_rate_limited_log_says_it_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    rlog = RateLimitedLog(logging.getLogger("t.guard"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t.guard"):
        assert rlog.event("a", "bad %s", "x")
        assert not any(rlog.event("a", "bad %s", "x") for _ in range(999))
        assert rlog.event("b", "other")  # another kind has its own interval
        now[0] = 10.0
        assert rlog.event("a", "bad %s", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad x", "other", "bad y (and 999 more in the last 10s)"]


def test_malformed_requests_have_a_kind_and_a_message_without_the_request() -> None:
    exc = http_exceptions.BadStatusLine("GARBAGE-zq7")
    code, kind, message = malformed_kind(400, exc)
    assert (code, kind) == ("bad_request", "bad_request_line") and "zq7" not in message
    assert malformed_kind(400, http_exceptions.LineTooLong("x" * 10, "8190"))[1] == "too_long"
    assert malformed_kind(400, None)[1] == "malformed"
    assert malformed_kind(500, RuntimeError())[:2] == ("internal", "internal")


async def test_failing_accepts_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(GuardLimits(log_interval_s=60))
    previous = loop.get_exception_handler()
    install_loop_handler(loop, guard)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                loop.call_exception_handler(
                    {"message": ACCEPT_FAILED, "exception": OSError(errno.EMFILE, "Too many")}
                )
            loop.set_exception_handler(None)
            install_loop_handler(loop, guard)
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(previous)
    assert guard.accept_errors == 1000
    accepts = [r for r in caplog.records if "accept() is failing" in r.getMessage()]
    assert len(accepts) == 1 and accepts[0].exc_info is None
    assert any("something else" in r.getMessage() for r in caplog.records)


def test_asyncio_still_reports_failed_accepts_in_these_words() -> None:
    # The loop handler recognises the failure by this message (and by errno).
    assert ACCEPT_FAILED in inspect.getsource(selector_events.BaseSelectorEventLoop)


async def test_the_aiohttp_surface_the_guard_builds_on() -> None:
    """Connection subclasses RequestHandler and overrides these by name and signature;
    GuardedSite is a BaseSite. A change here in aiohttp must be looked at, not missed."""
    init = inspect.signature(RequestHandler.__init__).parameters
    assert {"manager", "loop", "keepalive_timeout", "access_log"} <= init.keys()
    for name, params in {
        "connection_made": ["self", "transport"],
        "connection_lost": ["self", "exc"],
        "set_parser": ["self", "parser", "data_received_cb"],
        "finish_response": ["self", "request", "resp", "start_time"],
        "handle_error": ["self", "request", "status", "exc", "message"],
    }.items():
        assert list(inspect.signature(getattr(RequestHandler, name)).parameters) == params, name
        assert getattr(Connection, name) is not getattr(RequestHandler, name), name
    assert issubclass(GuardedSite, web.BaseSite)
    assert isinstance(web.AppRunner.server, property)

    # No per-connection dict: two slots more than aiohttp's own connection.
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    loop = asyncio.get_running_loop()
    conn = Connection(ConnectionGuard(GuardLimits()), web.Server(handler), loop=loop)
    assert not hasattr(conn, "__dict__")
