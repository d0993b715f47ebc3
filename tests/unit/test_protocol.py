"""Client frames, pure: what parses and what gets which error frame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.access.protocol import FrameError, parse_frame


@pytest.mark.parametrize(
    "data,code",
    [
        ('{"t": "ping"', "malformed"),
        ("[1, 2]", "malformed"),
        ('"ping"', "malformed"),
        ('{"type": "ping"}', "malformed"),
        ('{"t": ""}', "malformed"),
        ('{"t": 5}', "malformed"),
        ('{"t": "msg", "v": NaN}', "malformed"),  # not JSON: browsers could not read it
        ('{"t": "msg", "v": Infinity}', "malformed"),
        ("[" * 30_000 + "]" * 30_000, "malformed"),  # json.loads: RecursionError
        ('{"t": "msg", "body": "\\ud800"}', "malformed"),  # half a surrogate pair: not UTF-8
        ('{"t": "msg", "body": "\\udc00 x"}', "malformed"),
        ('{"t": "msg", "body": "' + "é" * 40 + '"}', "too_large"),  # 64 bytes, not chars
    ],
)
def test_bad_frames(data: str, code: str) -> None:
    found = parse_frame(data, 64 if code == "too_large" else 65_536)
    assert isinstance(found, FrameError) and found.code == code


@pytest.mark.parametrize(
    "data,says",
    [
        ('{"t": "ping"', "not JSON: Expecting ',' delimiter at character 12"),
        ("{'t': 'ping'}", "not JSON: Expecting property name enclosed in double quotes at"),
        ('{"t": "ping"}{"t": "ping"}', "not JSON: Extra data at character 13"),
        ('\ufeff{"t": "ping"}', "not JSON: starts with a byte order mark"),
        ('{"t": "ping", "n": ' + "1" * 5000 + "}", "not JSON: a number of more than 4300 digits"),
        ('{"t": "msg", "v": NaN}', "not JSON: NaN is not JSON"),
        ("[" * 30_000 + "]" * 30_000, "not JSON: nested too deeply"),
        ('{"t": "msg", "body": "\\ud800"}', "not JSON: a \\u escape names half a surrogate"),
        ("[1, 2]", "frames are JSON objects"),
    ],
)
def test_a_malformed_frame_says_what_is_wrong(data: str, says: str) -> None:
    """The client's developer reads the error frame: it names the problem and where."""
    found = parse_frame(data, 65_536)
    assert isinstance(found, FrameError) and found.code == "malformed"
    assert found.message.startswith(says), found.message
    assert len(found.message) <= 120


def test_escaped_surrogate_pair_is_a_character() -> None:
    assert parse_frame('{"t": "msg", "body": "\\ud83d\\ude00"}', 1024) == {"t": "msg", "body": "😀"}


def test_good_frame() -> None:
    assert parse_frame('{"t": "msg", "to": "bob", "n": 1.5}', 1024) == {
        "t": "msg",
        "to": "bob",
        "n": 1.5,
    }


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(data: str) -> None:
    found = parse_frame(data, 256)
    if isinstance(found, FrameError):
        assert found.code in ("malformed", "too_large") and 0 < len(found.message) <= 120
    else:
        assert isinstance(found.get("t"), str)
