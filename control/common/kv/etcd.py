"""The etcd v3 key-value store through aetcd (asyncio gRPC)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions as aetcd_errors
from aetcd import rpc

from control.common.errors import (
    BackendUnavailable,
    ImctlError,
    LeaseNotFound,
    RevisionCompacted,
)
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


_UNREACHABLE = (aetcd_errors.ConnectionFailedError, aetcd_errors.ConnectionTimeoutError)

# gRPC's reconnect backoff grows to 120 s by default: after a 20 s etcd outage a client sat
# 8-14 s idle with etcd serving again. Capped here, a broken channel tries again at least
# every RECONNECT_MAX_S (+20 % gRPC jitter); callers retry every <= 1 s, so a node is back
# within RECONNECT_MAX_S * 1.2 + 1 s < 2 s of etcd answering.
RECONNECT_MAX_S = 0.5
CHANNEL_OPTIONS: dict[str, int] = {
    "grpc.initial_reconnect_backoff_ms": int(RECONNECT_MAX_S * 1000 / 2),
    "grpc.max_reconnect_backoff_ms": int(RECONNECT_MAX_S * 1000),
    # The shortest time a connection attempt is given (gRPC's default is 20 s).
    "grpc.min_reconnect_backoff_ms": int(RECONNECT_MAX_S * 1000 * 2),
}


class EtcdKV(KeyValueStore):
    """etcd through aetcd. With several endpoints, a call that finds its member unreachable
    moves the client to the next one; the caller's retry then goes there (leases and
    revisions are cluster-wide, so watches resume and keepalives continue)."""

    name = "etcd"

    def __init__(self, endpoints: str | Sequence[str], timeout_s: float = 5.0) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.timeout_s = timeout_s
        self._index = 0
        self._client = self._make(self.endpoints[0])
        self.failovers = 0

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def _make(self, endpoint: str) -> aetcd.Client:
        host, _, port = endpoint.rpartition(":")
        return aetcd.Client(
            host=host or "127.0.0.1",
            port=int(port or 2379),
            timeout=self.timeout_s,
            options=dict(CHANNEL_OPTIONS),
        )

    async def _failover(self) -> None:
        if len(self.endpoints) == 1:
            return
        old, failed = self._client, self.endpoint
        self._index = (self._index + 1) % len(self.endpoints)
        self._client = self._make(self.endpoint)
        self.failovers += 1
        log.warning("etcd member %s unreachable; switching to %s", failed, self.endpoint)
        try:
            await old.close()
        except Exception as exc:  # it is the broken one
            log.debug("closing the client of %s: %r", failed, exc)

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        endpoint = self.endpoint
        try:
            return await fn()
        except aetcd_errors.RevisionCompactedError as exc:
            raise RevisionCompacted(exc.compacted_revision) from exc
        except _UNREACHABLE as exc:
            if endpoint == self.endpoint:  # not already moved on by a concurrent call
                await self._failover()
            raise BackendUnavailable(f"etcd at {endpoint}: {exc!r}") from exc
        except aetcd_errors.ClientError as exc:
            raise BackendUnavailable(f"etcd at {endpoint}: {exc!r}") from exc

    async def connect(self) -> None:
        """Connect to the first member that answers."""
        last: BackendUnavailable | None = None
        for _ in self.endpoints:
            try:
                await self._call(lambda: self._client.connect())
                await self._call(lambda: self._client.status())
                return
            except BackendUnavailable as exc:
                last = exc
        assert last is not None
        raise last

    async def close(self) -> None:
        # Bounded: shutdown must end even when the client's channel does not (a full test
        # run once hung here, in a teardown right after an etcd restart).
        try:
            async with asyncio.timeout(max(2.0, self.timeout_s)):
                await self._client.close()
        except aetcd_errors.ClientError as exc:
            log.debug("etcd close: %r", exc)
        except TimeoutError:
            log.warning("etcd client for %s did not close in time; leaving it", self.endpoint)

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
        """One gRPC stream per watch, never shared and never reused.

        aetcd multiplexes every watch of a client on one stream and pairs each "created"
        reply with whichever create is pending: after a WatchTimeoutError (etcd stalled) a
        late reply went to the next watch, which then got another prefix's events. Here a
        stream carries exactly one watch and is cancelled whenever the watch ends, so a late
        reply has nowhere to go.
        """
        p = prefix.encode()
        endpoint = self.endpoint
        client = self._client
        await self._call(client.connect)
        call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        create = rpc.WatchCreateRequest(
            key=p, range_end=_range_end(p), start_revision=start_revision
        )
        try:
            responses = call.__aiter__()
            try:
                async with asyncio.timeout(self.timeout_s):
                    await call.write(rpc.WatchRequest(create_request=create))
                    first = await responses.__anext__()
            except TimeoutError:
                raise BackendUnavailable(
                    f"etcd at {endpoint}: watch on {prefix} not created within {self.timeout_s}s"
                ) from None
            _check_watch(first, prefix)
            if not first.created:
                raise BackendUnavailable(f"etcd at {endpoint}: watch on {prefix} not created")
            while True:
                response = await responses.__anext__()
                _check_watch(response, prefix)
                for event in response.events:
                    yield WatchEvent(
                        "delete" if event.type == rpc.Event.DELETE else "put",
                        event.kv.key.decode(),
                        bytes(event.kv.value),
                        event.kv.mod_revision,
                    )
        except StopAsyncIteration:
            raise BackendUnavailable(f"etcd at {endpoint}: watch stream ended") from None
        except rpc.AioRpcError as exc:
            if exc.code() == rpc.StatusCode.UNAVAILABLE and endpoint == self.endpoint:
                await self._failover()
            raise BackendUnavailable(f"etcd at {endpoint}: watch: {exc.details()}") from exc
        except ImctlError:
            raise
        except Exception as exc:  # grpc surfaces other raw errors through the stream
            raise BackendUnavailable(f"etcd at {endpoint}: watch: {exc!r}") from exc
        finally:
            call.cancel()


def _check_watch(response: Any, prefix: str) -> None:
    """Raise what a watch response says went wrong with the watch."""
    if response.compact_revision:
        raise RevisionCompacted(int(response.compact_revision))
    if response.canceled:
        reason = response.cancel_reason or "no reason given"
        raise BackendUnavailable(f"etcd cancelled the watch on {prefix}: {reason}")
