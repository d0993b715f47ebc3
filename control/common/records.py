"""Typed records under a key prefix: one store for node records, drain requests, the
election key and gray releases (and next the ring spec).

A :class:`RecordType` says how one type is kept: ``parse`` (the schema, raising on a bad
value) and ``serialize``, its exact inverse. The default serializer is :func:`to_data`
over every dataclass field, so a field added to a record is saved without anyone
remembering to; ``tests/unit/test_record_store.py`` holds every type to
``parse(serialize(r)) == r``. :class:`RecordStore` offers get / list / put / cas / delete
/ mirror for one type under one directory of a :class:`KeyValueStore`; an unreadable value
is logged (once per value) and skipped, so one bad record never hides the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from control.common.errors import BadRequest
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror

log = logging.getLogger(__name__)
R = TypeVar("R")

# What a parser raises for a value that is not a record of its type.
PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, BadRequest)


def to_data(value: Any) -> Any:
    """Plain JSON data for a record: the inverse of :func:`control.common.schema.build`.

    Every dataclass field is written (a new field cannot be left out); a type that
    :func:`~control.common.schema.convert` builds with ``from_config`` writes itself back
    with ``to_config``.
    """
    to_config = getattr(value, "to_config", None)
    if to_config is not None:
        return to_config()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_data(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    return value


def dump_json(record: Any) -> bytes:
    """A record as compact JSON with sorted keys (stable bytes for the same record)."""
    return json.dumps(to_data(record), separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class RecordType(Generic[R]):
    """How records of one type are stored.

    ``parse(raw, where)`` raises one of :data:`PARSE_ERRORS` naming what is wrong;
    ``serialize`` is its inverse. ``name_of`` gives the name a record must be stored under
    (its key's last part), for records that carry it (a node's id, a release's name); a
    value stored under another name is not taken. ``what`` names the type in logs.
    """

    what: str
    parse: Callable[[bytes, str], R]
    serialize: Callable[[R], bytes] = dump_json
    name_of: Callable[[R], str] | None = None


@dataclass(frozen=True, slots=True)
class Stored(Generic[R]):
    """One record as read, with what compare-and-swap and leases need."""

    record: R | None  # None: a value is there, but it is not a record (logged)
    revision: int  # the entry's mod_revision: the ``expected`` of the next cas
    lease: int


class RecordStore(Generic[R]):
    """Records of one :class:`RecordType` under one directory (ending in ``/``)."""

    def __init__(self, kv: KeyValueStore, directory: str, rtype: RecordType[R]) -> None:
        if not directory.endswith("/"):
            raise ValueError(f"a record directory ends in '/', got {directory!r}")
        self.kv = kv
        self.prefix = directory
        self.type = rtype
        self._unreadable: dict[str, bytes] = {}  # key -> the bad value last warned about

    def key(self, name: str) -> str:
        return self.prefix + name

    def _name(self, record: R, name: str | None) -> str:
        if name is not None:
            return name
        if self.type.name_of is None:
            raise TypeError(f"a {self.type.what} carries no name: pass one")
        return self.type.name_of(record)

    def read(self, key: str, raw: bytes) -> R | None:
        """The record stored at ``key``; None when it is not one (warned once per value)."""
        try:
            record = self.type.parse(raw, key)
        except PARSE_ERRORS as exc:
            self._warn(key, raw, f"ignoring the value at %s: not a {self.type.what}: %s", exc)
            return None
        if self.type.name_of is not None and self.key(self.type.name_of(record)) != key:
            why = f"a {self.type.what} that names {self.type.name_of(record)!r}"
            self._warn(key, raw, "ignoring the value at %s: %s", why)
            return None
        self._unreadable.pop(key, None)  # a bad value written again later warns again
        return record

    def _warn(self, key: str, raw: bytes, message: str, why: object) -> None:
        if self._unreadable.get(key) != raw:
            if len(self._unreadable) >= 1024:  # bounded: keys come and go
                self._unreadable.clear()
            self._unreadable[key] = raw
            log.warning(message, key, why)

    async def get(self, name: str) -> Stored[R] | None:
        """The entry at ``name``; None when there is none."""
        entry = await self.kv.get(self.key(name))
        if entry is None:
            return None
        return Stored(self.read(entry.key, entry.value), entry.mod_revision, entry.lease)

    async def list(self) -> tuple[dict[str, R], int]:
        """Every readable record by name, and the store revision the listing saw."""
        entries, revision = await self.kv.range(self.prefix)
        records: dict[str, R] = {}
        for entry in entries:
            record = self.read(entry.key, entry.value)
            if record is not None:
                records[entry.key[len(self.prefix) :]] = record
        return records, revision

    async def put(self, record: R, lease: int = 0, name: str | None = None) -> int:
        """Write unconditionally; returns the new revision."""
        key = self.key(self._name(record, name))
        return await self.kv.put(key, self.type.serialize(record), lease=lease)

    async def cas(
        self, record: R, expected: int, lease: int = 0, name: str | None = None
    ) -> tuple[bool, int]:
        """Write only over revision ``expected`` (0: create); see ``compare_and_swap``."""
        key = self.key(self._name(record, name))
        return await self.kv.compare_and_swap(
            key, self.type.serialize(record), expected, lease=lease
        )

    async def delete(self, name: str, expected: int | None = None) -> bool:
        return await self.kv.delete(self.key(name), expected)

    def mirror(
        self,
        on_change: Callable[[Mapping[str, R]], None],
        verify_s: float = 10.0,
        only: str | None = None,
    ) -> PrefixMirror[R]:
        """A live copy of the directory, by name (``only``: of that one name's record)."""
        wanted = None if only is None else self.key(only)

        def parse(key: str, raw: bytes) -> R | None:
            if wanted is not None and key != wanted:
                return None
            return self.read(key, raw)

        return PrefixMirror(self.kv, self.prefix, parse, on_change, verify_s=verify_s)
