"""The key-value backend beneath the registry and the stores: one interface, an embedded
in-process implementation and an etcd one, both held to ``tests/conformance``.

Revisions follow etcd: one global counter, bumped by every change; an entry remembers the
revision that last changed it (``mod_revision``) and compare-and-swap compares that.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from control.common.errors import FatalError


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int


def _check_key(key: str) -> None:
    if not key or not key.startswith("/"):
        raise FatalError(f"key must be an absolute path, got {key!r}")


class KeyValueStore(abc.ABC):
    """What the registry and the stores need from a consistent key-value store."""

    name: str = "abstract"

    async def connect(self) -> None:
        """Open connections; the default store needs none."""

    async def close(self) -> None:
        """Release connections and background work."""

    async def get(self, key: str) -> Entry | None:
        _check_key(key)
        return await self._get(key)

    async def range(self, prefix: str) -> tuple[list[Entry], int]:
        """Every entry under ``prefix`` and the store revision the read saw."""
        _check_key(prefix)
        return await self._range(prefix)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; returns the new revision."""
        _check_key(key)
        return await self._put(key, value, lease)

    async def compare_and_swap(
        self, key: str, value: bytes, expected: int, lease: int = 0
    ) -> tuple[bool, int]:
        """Write only if the entry's ``mod_revision`` is ``expected`` (0: must not exist).

        Returns (written, revision): the new revision when written, else the entry's current
        ``mod_revision`` (0 when absent) so the caller can re-read and retry.
        """
        _check_key(key)
        if expected < 0:
            raise FatalError("expected revision must be >= 0")
        return await self._compare_and_swap(key, value, expected, lease)

    async def delete(self, key: str, expected: int | None = None) -> bool:
        """Delete ``key`` (only at revision ``expected`` when given); True when it went."""
        _check_key(key)
        return await self._delete(key, expected)

    async def grant_lease(self, ttl: int) -> int:
        if ttl < 1:
            raise FatalError("lease ttl must be at least 1 second")
        return await self._grant_lease(ttl)

    @abc.abstractmethod
    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its TTL; raises LeaseNotFound when it is gone."""

    @abc.abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """Drop ``lease`` and every key attached to it; a missing lease is fine."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` from ``start_revision`` (inclusive), in order.

        Raises RevisionCompacted when that history is gone, BackendUnavailable when the
        stream breaks; the caller resumes from the last revision it saw + 1.
        """

    @abc.abstractmethod
    async def _get(self, key: str) -> Entry | None: ...

    @abc.abstractmethod
    async def _range(self, prefix: str) -> tuple[list[Entry], int]: ...

    @abc.abstractmethod
    async def _put(self, key: str, value: bytes, lease: int) -> int: ...

    @abc.abstractmethod
    async def _compare_and_swap(
        self, key: str, value: bytes, expected: int, lease: int
    ) -> tuple[bool, int]: ...

    @abc.abstractmethod
    async def _delete(self, key: str, expected: int | None) -> bool: ...

    @abc.abstractmethod
    async def _grant_lease(self, ttl: int) -> int: ...
