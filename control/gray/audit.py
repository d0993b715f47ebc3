"""The audit trail of gray releases: one :class:`AuditRecord` per change. Pure: no IO.

A record says who changed which release, when, why, from which revision to which, each
changed field as ``(before, after)`` in plain JSON data, and the numbers a decision saw
(``figures``: empty for a human, the analysis' figures for the controller). Records live at
``<prefix>/gray-audit/<name>/<revision>`` (see :mod:`control.common.keys`); the store
(:mod:`control.gray.store`) writes them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from control.common.errors import BAD_JSON, BadRequest
from control.common.records import RecordType, to_data
from control.common.schema import build, setting
from control.gray.model import Release

# What a change may be called: create, apply, set-percent, step, pause, resume, promote,
# rollback, delete (and next round analysis, advance). A pattern, not a list, so a new verb
# needs no change here.
ACTION_PATTERN = r"[a-z][a-z-]{0,31}"
CREATE = "create"
DELETE = "delete"


@dataclass(frozen=True)
class AuditRecord:
    """One change of one release, as it is kept (and read back) in the audit trail."""

    release: str = setting(doc="the release's name")
    action: str = setting(doc="the verb that made the change", pattern=ACTION_PATTERN)
    revision: int = setting(doc="the release's revision after the change (0: deleted)", ge=0)
    from_revision: int = setting(doc="the release's revision before it (0: created)", ge=0)
    at: float = setting(doc="when, in seconds since the epoch")
    by: str = setting(doc="who: the admin token's name, or the controller")
    why: str = setting("", "the reason given, if any")
    changes: Mapping[str, tuple[Any, Any]] = setting(
        MappingProxyType({}), "field -> (before, after), plain data"
    )
    figures: Mapping[str, Any] = setting(
        MappingProxyType({}), "the numbers a decision saw (empty for a human)"
    )

    def check(self, path: str) -> list[str]:
        return [
            f"{path}.changes.{field}: expected [before, after]"
            for field, pair in self.changes.items()
            if not isinstance(pair, tuple) or len(pair) != 2
        ]


def audit_from_json(raw: bytes, where: str = "audit record") -> AuditRecord:
    """Parse a stored audit record; raises BadRequest listing every problem."""
    try:
        data = json.loads(raw)
    except BAD_JSON as exc:
        raise BadRequest(where, f"not JSON ({exc})") from None
    return audit_from_data(data, where)


def audit_from_data(data: Any, where: str) -> AuditRecord:
    problems: list[str] = []
    record = build(AuditRecord, data, where, problems)
    if problems:
        raise BadRequest(where, "; ".join(problems))
    return record


AUDITS: RecordType[AuditRecord] = RecordType("audit record", audit_from_json)


def diff(before: Release | None, after: Release | None) -> dict[str, tuple[Any, Any]]:
    """Every field that differs, as ``(before, after)`` plain data (None: no release then).

    A creation lists every field of the new release and a deletion every field of the old
    one, so the trail alone can say what a release was.
    """
    changes: dict[str, tuple[Any, Any]] = {}
    for field in dataclasses.fields(Release):
        old = None if before is None else to_data(getattr(before, field.name))
        new = None if after is None else to_data(getattr(after, field.name))
        if old != new or (before is None) != (after is None):
            changes[field.name] = (old, new)
    return changes
