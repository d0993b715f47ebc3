"""The etcd v3 key-value store through aetcd (asyncio gRPC)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions as aetcd_errors

from control.common.errors import BackendUnavailable, LeaseNotFound, RevisionCompacted
from control.common.kv import Entry, KeyValueStore, WatchEvent

log = logging.getLogger(__name__)
T = TypeVar("T")


def _range_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's prefix range)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _entry(kv: Any) -> Entry:
    return Entry(
        key=kv.key.decode(),
        value=bytes(kv.value),
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        lease=kv.lease,
    )


class EtcdKV(KeyValueStore):
    name = "etcd"

    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        host, _, port = endpoint.rpartition(":")
        self.endpoint = endpoint
        self._client = aetcd.Client(
            host=host or "127.0.0.1", port=int(port or 2379), timeout=timeout_s
        )

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except aetcd_errors.RevisionCompactedError as exc:
            raise RevisionCompacted(exc.compacted_revision) from exc
        except aetcd_errors.ClientError as exc:
            raise BackendUnavailable(f"etcd at {self.endpoint}: {exc!r}") from exc

    async def connect(self) -> None:
        await self._call(self._client.connect)
        await self._call(self._client.status)

    async def close(self) -> None:
        try:
            await self._client.close()
        except aetcd_errors.ClientError as exc:
            log.debug("etcd close: %r", exc)

    async def _get(self, key: str) -> Entry | None:
        got = await self._call(lambda: self._client.get(key.encode()))
        return _entry(got) if got is not None else None

    async def _range(self, prefix: str) -> tuple[list[Entry], int]:
        got = await self._call(lambda: self._client.get_prefix(prefix.encode()))
        return [_entry(kv) for kv in got.kvs], got.header.revision

    async def _put(self, key: str, value: bytes, lease: int) -> int:
        async def put() -> int:
            try:
                result = await self._client.put(key.encode(), value, lease=lease or None)
            except aetcd_errors.ClientError as exc:
                if "lease not found" in str(exc):
                    raise LeaseNotFound(f"lease {lease} not found") from exc
                raise
            return int(result.header.revision)

        return await self._call(put)

    async def _compare_and_swap(
        self, key: str, value: bytes, expected: int, lease: int
    ) -> tuple[bool, int]:
        k = key.encode()
        tx = self._client.transactions
        compare = [tx.mod(k) == expected] if expected else [tx.create(k) == 0]

        async def txn() -> tuple[bool, int]:
            try:
                ok, responses = await self._client.transaction(
                    compare=compare,
                    success=[tx.put(k, value, lease=lease or None)],
                    failure=[tx.get(k)],
                )
            except aetcd_errors.ClientError as exc:
                if "lease not found" in str(exc):
                    raise LeaseNotFound(f"lease {lease} not found") from exc
                raise
            if ok:
                return True, int(responses[0].response_put.header.revision)
            current = responses[0][0][1].mod_revision if responses and responses[0] else 0
            return False, int(current)

        return await self._call(txn)

    async def _delete(self, key: str, expected: int | None) -> bool:
        k = key.encode()
        if expected is None:
            deleted = await self._call(lambda: self._client.delete(k))
            return bool(deleted and deleted.deleted)
        tx = self._client.transactions
        ok, _ = await self._call(
            lambda: self._client.transaction(
                compare=[tx.mod(k) == expected], success=[tx.delete(k)], failure=[]
            )
        )
        return bool(ok)

    async def _grant_lease(self, ttl: int) -> int:
        lease = await self._call(lambda: self._client.lease(ttl))
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        reply = await self._call(lambda: self._client.refresh_lease(lease))
        if reply is None or reply.TTL <= 0:
            raise LeaseNotFound(f"lease {lease} not found")
        return int(reply.TTL)

    async def revoke_lease(self, lease: int) -> None:
        try:
            await self._call(lambda: self._client.revoke_lease(lease))
        except BackendUnavailable as exc:
            if "lease not found" not in str(exc):
                raise

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        p = prefix.encode()
        watch = await self._call(
            lambda: self._client.watch(p, range_end=_range_end(p), start_revision=start_revision)
        )
        try:
            iterator = watch.__aiter__()
            while True:
                try:
                    event = await iterator.__anext__()
                except StopAsyncIteration:
                    # aetcd ends the iterator when its stream is shut down: treat as broken.
                    raise BackendUnavailable("etcd watch stream ended") from None
                except aetcd_errors.RevisionCompactedError as exc:
                    raise RevisionCompacted(exc.compacted_revision) from exc
                except aetcd_errors.ClientError as exc:
                    raise BackendUnavailable(f"etcd watch: {exc!r}") from exc
                except Exception as exc:  # grpc surfaces raw errors through the stream
                    raise BackendUnavailable(f"etcd watch: {exc!r}") from exc
                yield WatchEvent(
                    "put" if event.kind == "PUT" else "delete",
                    event.kv.key.decode(),
                    bytes(event.kv.value),
                    event.kv.mod_revision,
                )
        finally:
            try:
                await watch.cancel()
            except Exception as exc:  # the stream may already be gone
                log.debug("etcd watch cancel: %r", exc)
