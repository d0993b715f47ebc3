"""Rules for identifiers and counts that every edge checks the same way: the scheduler,
the admin API and the CLI (before it sends anything). Pure."""

from __future__ import annotations

import re

MAX_UID = 128
UID_RE = re.compile(r"[A-Za-z0-9_.:@+=-]{1,128}")
EVENTS_COUNT_MAX = 1_000_000  # events one tail may ask for before it ends


def event_count(text: str) -> int | None:
    """A tail's ``count``: a whole number from 1 to EVENTS_COUNT_MAX, else None. isascii:
    str.isdigit() also takes digits int() refuses, such as "²"."""
    if not (text.isascii() and text.isdigit() and len(text) <= 7):
        return None
    count = int(text)
    return count if 1 <= count <= EVENTS_COUNT_MAX else None
