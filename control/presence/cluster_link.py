"""The Redis Cluster engine's plumbing: buckets of users pinned to one slot each by a hash
tag, the scripts run through redis-py's cluster client (which follows MOVED, ASK and
TRYAGAIN), and a bucket's store (a ``RedisShard`` whose keys all share the bucket's tag).

A bucket is the unit Redis Cluster moves: every key of a bucket — its users' strings,
expiry index, node indexes, counters, event stream — is ``<prefix>{<tag>}:...``, so each
per-user script touches one slot, and the bucket's exact counters move with its users.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import cache
from itertools import chain
from typing import Any

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from control.common.errors import BackendUnavailable
from control.presence.model import Locations, split_records
from control.presence.redis_link import SCRIPTS, RedisLink, _load
from control.presence.redis_store import RedisShard

TAG_TRIES = 1_000_000  # a tag for every bucket is found within a few thousand


@cache
def bucket_tags(buckets: int) -> tuple[str, ...]:
    """One hash tag per bucket, bucket ``i``'s tag hashing into the ``i``-th equal range of
    the 16384 slots: buckets spread over the masters as evenly as the slots do, and a user
    lives in the slot range its own uid hashes to."""
    if not 1 <= buckets <= REDIS_CLUSTER_HASH_SLOTS:
        raise ValueError(f"buckets: 1..{REDIS_CLUSTER_HASH_SLOTS}, not {buckets}")
    tags: list[str | None] = [None] * buckets
    left = buckets
    for n in range(TAG_TRIES):
        tag = f"{n:x}"
        i = key_slot(tag.encode()) * buckets // REDIS_CLUSTER_HASH_SLOTS
        if tags[i] is None:
            tags[i] = tag
            left -= 1
            if not left:
                return tuple(t for t in tags if t is not None)
    raise ValueError(f"no hash tag found for some of {buckets} buckets")


def bucket_of(uid: str, buckets: int) -> int:
    """The bucket a user's keys live in (the slot range its uid hashes to)."""
    return key_slot(uid.encode()) * buckets // REDIS_CLUSTER_HASH_SLOTS


class ClusterLink(RedisLink):
    """``RedisLink``'s calls on a Redis Cluster: the same scripts, routed by their keys'
    slot (all keys of a call share one). redis-py follows MOVED/ASK and waits out TRYAGAIN;
    a script a node does not know (a promoted replica, a restart) is loaded and run again."""

    def __init__(self, client: RedisCluster, name: str, calls_max: int) -> None:
        self.shard_id = name
        self.url = name
        self.redis = client  # type: ignore[assignment]
        self.scripts = {n: client.register_script(_load(n)) for n in SCRIPTS}
        # redis-py's cluster pools fail (MaxConnectionsError) rather than queue: a login
        # storm over hundreds of buckets waits here for a turn instead.
        self.gate = asyncio.Semaphore(calls_max)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def ready(self) -> None:
        """Read the slot map once before the first call: redis-py's lazy start under
        hundreds of concurrent first calls sent some to the wrong node and, refreshing,
        closed connections in use (their scripts then ran twice)."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                try:
                    await self.redis.initialize()
                except RedisError as exc:
                    raise self.unavailable(exc) from exc
                self._ready = True

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        await self.ready()
        async with self.gate:
            return await super().run(name, keys, args)

    async def run_packed_calls(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[str]]]
    ) -> list[Any]:
        """One script call per (keys, arguments) in one cluster pipeline: grouped by node,
        the nodes concurrently, each redirected call retried on its own."""
        script = self.scripts[name]
        results = await self._pipeline(script.sha, calls)
        if any(isinstance(r, NoScriptError) for r in results):
            try:
                await self.redis.script_load(script.script)
            except RedisError as exc:
                raise self.unavailable(exc) from exc
            results = await self._pipeline(script.sha, calls)
        for r in results:
            if isinstance(r, RedisError):
                raise self.error(r) from r
            if isinstance(r, Exception):
                raise r
        return results

    async def _pipeline(
        self, sha: str, calls: Sequence[tuple[Sequence[str], Sequence[str]]]
    ) -> list[Any]:
        pipe = self.redis.pipeline()
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except RedisError as exc:
            raise self.unavailable(exc) from exc

    async def packed(self, command: bytes, replies: int) -> list[Any]:
        raise NotImplementedError("a cluster bucket has no single connection")

    async def close(self) -> None:
        await self.redis.aclose()


class BucketShard(RedisShard):
    """One bucket's store: ``RedisShard``'s scripts on keys that all carry the bucket's
    hash tag, through the cluster's shared client. Never fenced (ring version 0: Redis
    Cluster's own MOVED does what the ring's fencing does)."""

    def __init__(
        self, bucket: int, tag: str, link: ClusterLink, timeout_s: float, key_prefix: str
    ) -> None:
        super().__init__(f"b{bucket}", link.url, timeout_s, f"{key_prefix}{{{tag}}}:", link=link)
        self.bucket = bucket
        self.slot = key_slot(tag.encode())

    async def locate(self, uids: Sequence[str], *, ring_version: int) -> Locations:
        try:
            values = await self.redis.mget([self.user_key(u) for u in uids]) if uids else []
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        fields, _skipped = split_records(list(map(str, filter(None, values))))
        return Locations([fields])

    async def close(self) -> None:
        """The client is the engine's: closed once, there."""


def split_values(replies: Sequence[Any]) -> list[str]:
    """The records of several MGET replies, back to back (malformed values skipped)."""
    fields, _skipped = split_records(list(filter(None, chain.from_iterable(replies))))
    return fields


def unavailable(what: str, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(f"redis cluster ({what}): {exc}")


_UNSET = object()


async def send_by_master(
    client: RedisCluster, slotted: Sequence[tuple[int, tuple[Any, ...]]]
) -> list[Any]:
    """Commands (each with the slot it touches) grouped by the master the client's slot map
    names, each group packed by hiredis in C and pipelined on one connection, the masters
    concurrently: the fast path of a batch (redis-py's cluster pipeline packs and routes
    command by command in Python, which for 256 buckets cost more than Redis's work). Each
    reply, or its exception: the caller sends the failed ones again through redis-py,
    which follows MOVED/ASK/TRYAGAIN and refreshes the map."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    manager: Any = client.nodes_manager
    for i, (slot, _command) in enumerate(slotted):
        try:
            node = manager.get_node_from_slot(slot)
        except Exception:
            continue
        groups.setdefault(node.name, (node, []))[1].append(i)
    out: list[Any] = [_UNSET] * len(slotted)

    async def one(node: Any, idx: list[int]) -> None:
        try:
            conn = node.acquire_connection()
        except RedisError as exc:
            for i in idx:
                out[i] = exc
            return
        try:
            payload = b"".join(hiredis.pack_command(slotted[i][1]) for i in idx)
            await conn.send_packed_command(payload)
            for i in idx:
                try:
                    out[i] = await conn.read_response()
                except ResponseError as exc:  # an error reply, read whole
                    out[i] = exc
        except Exception as exc:
            await conn.disconnect()
            for i in idx:
                if out[i] is _UNSET:
                    out[i] = exc
        except BaseException:
            await conn.disconnect()  # cancelled mid-read: never reuse a half-read connection
            raise
        finally:
            node.release(conn)

    await asyncio.gather(*(one(node, idx) for node, idx in groups.values()))
    return [RedisError("slot not mapped") if r is _UNSET else r for r in out]
