"""Every secret comparison of every HTTP surface goes through one constant-time check."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from control.common import auth
from control.common.auth import Grant, TokenTable, bearer, same_secret

TABLE = TokenTable.of(
    [Grant("v", "viewer-token-0123456", "viewer"), Grant("o", "operator-token-0123", "operator")]
)


@pytest.mark.parametrize(
    "header,token",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BeArEr  abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("", None),
        (None, None),
        ("Bearerabc", None),
    ],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_roles() -> None:
    assert TABLE.role_of("Bearer viewer-token-0123456") == "viewer"
    assert TABLE.role_of("bearer operator-token-0123") == "operator"
    assert TABLE.role_of("Bearer operator-token-012") is None
    assert TokenTable.of([]).role_of(None) == "operator"  # open: loopback clusters
    assert same_secret("caf\udce9", "caf\udce9") and not same_secret("a", "b")


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain ``==`` leaks how much of a token matched; every comparison must go through
    hmac.compare_digest, against every grant."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert TABLE.grant_of("viewer-token-0123456") == TABLE.grants[0]
    assert len(calls) == len(TABLE.grants)  # the search does not stop at the first match
    calls.clear()
    assert TABLE.role_of("Bearer nope") is None
    assert len(calls) == len(TABLE.grants)
