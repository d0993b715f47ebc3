"""Presence on a Redis Cluster (``presence.backend: redis-cluster``): the second engine,
beside the ring of single Redis servers (``PresenceCluster``), offering the access nodes,
the scheduler and the controller the same calls.

Users are spread over ``buckets`` hash tags (``cluster_link.bucket_tags``); a user's keys
and its bucket's indexes, counters and event stream share one slot, so every per-user Lua
script is single-slot and Redis Cluster moves a bucket whole (its counters with it).
Batches (heartbeats, ``locate``) are grouped by bucket, then by the master that owns each
bucket's slot, and sent to the masters concurrently, packed in C (``send_by_master``); a
command redirected (MOVED/ASK) or told TRYAGAIN goes again on its own through redis-py,
which follows the redirection, so a batch is retried per slot while ``redis-cli --cluster
reshard`` moves slots. Resharding and failover are Redis Cluster's; no ring, no mover, no
fencing (ring version 0).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from control.common.errors import BackendUnavailable, BadRequest
from control.presence.cluster import _check
from control.presence.cluster_events import follow_buckets
from control.presence.cluster_link import (
    BucketShard,
    ClusterLink,
    bucket_of,
    bucket_tags,
    send_by_master,
    split_values,
)
from control.presence.model import (
    STATUSES,
    Counts,
    Locations,
    Presence,
    PresenceEvent,
    ShardUnavailable,
    Status,
    has_separator,
    member,
    split_member,
)
from control.presence.routing import ClusterStats

log = logging.getLogger(__name__)
T = TypeVar("T")
TOUCH_CHUNK = 5_000  # heartbeats per script call (as on a ring shard)
MGET_CHUNK = 5_000
ENGINE = "redis-cluster"
REFRESH_S = 0.2  # the slot map is read again at most this often while a master is down
FANOUT = 32  # buckets swept or evicted at once (each holds a connection at a time)


def parse_seeds(seeds: Iterable[str]) -> list[ClusterNode]:
    """``host:port`` seeds; BadRequest naming the first one that is not."""
    nodes = []
    for seed in seeds:
        host, _, port = seed.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest("presence.cluster.seeds", f"{seed!r}: expected host:port")
        nodes.append(ClusterNode(host, int(port)))
    if not nodes:
        raise BadRequest("presence.cluster.seeds", "at least one host:port")
    return nodes


@dataclass(frozen=True)
class Member:
    """One Redis Cluster node as CLUSTER NODES shows it."""

    id: str
    addr: str
    role: str  # master | replica
    master: str  # the master's id for a replica, "-" for a master
    health: str  # ok | pfail | fail | handshake | noaddr
    slots: int

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "addr": self.addr,
            "role": self.role,
            "master": self.master,
            "health": self.health,
            "slots": self.slots,
        }


def _script_error(exc: Exception) -> bool:
    """An error the script itself answered (not a redirection or a node down): sending it
    again would answer the same."""
    text = str(exc)
    redirect = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY", "MASTERDOWN")
    return (
        isinstance(exc, ResponseError)
        and not text.startswith(redirect)
        and not isinstance(exc, (MovedError, AskError, TryAgainError, ClusterDownError))
    )


def members_of(nodes: Mapping[str, Mapping[str, Any]]) -> list[Member]:
    """CLUSTER NODES as redis-py parses it (addr -> node_id, flags, master_id, slots as
    [lo, hi] pairs) as members: masters first (a pure function: tested without a cluster)."""
    members = []
    for addr, node in nodes.items():
        flags = str(node.get("flags", "")).split(",")
        health = next((f for f in ("fail", "pfail", "handshake", "noaddr") if f in flags), "ok")
        if "fail?" in flags:
            health = "pfail"
        slots = sum(int(r[-1]) - int(r[0]) + 1 for r in node.get("slots", []) if r)
        role = "master" if "master" in flags else "replica"
        master = str(node.get("master_id", "-"))
        members.append(Member(str(node.get("node_id", "")), addr, role, master, health, slots))
    return sorted(members, key=lambda m: (m.role != "master", m.addr))


class RedisClusterPresence:
    """The presence calls on a Redis Cluster (see the module's docstring)."""

    engine = ENGINE

    def __init__(
        self,
        seeds: Sequence[str],
        timeout_s: float,
        key_prefix: str = "imctl:",
        buckets: int = 256,
        clock: Callable[[], float] = time.time,
        max_connections: int = 256,
    ) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.seeds = list(seeds)
        self.client = RedisCluster(
            startup_nodes=parse_seeds(seeds),
            decode_responses=True,
            max_connections=max_connections,
            socket_timeout=5,
            socket_connect_timeout=2,
            # A MOVED only patches that slot's owner: a full refresh closes every
            # connection, in use or not, and redis-py then sends their commands again.
            reinitialize_steps=0,
        )
        self.link = ClusterLink(self.client, f"cluster {','.join(seeds)}", max_connections // 2)
        self._fanout = asyncio.Semaphore(FANOUT)
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        self.tags = bucket_tags(buckets)
        self.buckets = [
            BucketShard(i, tag, self.link, timeout_s, key_prefix) for i, tag in enumerate(self.tags)
        ]
        self._stats = ClusterStats()

    # What the ring engine offers beside the calls: no ring shards to count or move.

    @property
    def shards(self) -> Mapping[str, BucketShard]:
        """None to gauge per shard (a bucket is not a server: see ``status``)."""
        return {}

    @property
    def stats(self) -> ClusterStats:
        return self._stats

    def bucket(self, uid: str) -> BucketShard:
        return self.buckets[bucket_of(uid, len(self.buckets))]

    def _deadline_ms(self, now: float) -> int:
        return int((now + self.timeout_s) * 1000)

    async def _one(self, call: Any) -> Any:
        """A single-bucket call: a Redis failure becomes ShardUnavailable (503 upstream)."""
        try:
            await self.link.ready()
            return await call
        except BackendUnavailable as exc:
            raise ShardUnavailable(ENGINE, str(exc)) from exc

    async def _gated(self, call: Awaitable[T]) -> T:
        async with self._fanout:
            return await call

    # The calls ---------------------------------------------------------------------------

    async def online(self, p: Presence) -> Presence | None:
        _check(uid=p.uid, device=p.device, node=p.node, conn=p.conn)
        for name, value in (("region", p.region), ("platform", p.platform)):
            if has_separator(value):
                raise BadRequest(name, "must be free of control characters")
        now = self.clock()
        shard = self.bucket(p.uid)
        old = await self._one(shard.online(p, self._deadline_ms(now), now, ring_version=0))
        if old is not None and (old.node, old.conn) == (p.node, p.conn):
            # Sent twice (redis-py resends a command whose connection broke mid-call, a
            # failover): a login never replaces itself, and must not kick its own socket.
            return None
        return old

    async def offline(self, uid: str, device: str, conn: str, reason: str = "closed") -> bool:
        shard = self.bucket(uid)
        return bool(
            await self._one(shard.offline(uid, device, conn, reason, self.clock(), ring_version=0))
        )

    async def set_status(self, uid: str, device: str, conn: str, status: str) -> bool:
        if status not in STATUSES:
            raise BadRequest("status", f"must be one of {', '.join(STATUSES)}")
        st: Status = status  # type: ignore[assignment]
        shard = self.bucket(uid)
        return bool(
            await self._one(shard.set_status(uid, device, conn, st, self.clock(), ring_version=0))
        )

    async def who(self, uid: str) -> list[Presence]:
        return list(await self._one(self.bucket(uid).who(uid, ring_version=0)))

    async def touch(self, entries: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Heartbeats: one ``touch.lua`` call per bucket (at most ``TOUCH_CHUNK`` each), all
        in one cluster pipeline. A bucket whose master cannot be reached drops its
        heartbeats (counted, not reported missing: re-asserted when it is back)."""
        groups: dict[int, list[str]] = {}
        n = len(self.buckets)
        for uid, device, conn in entries:
            groups.setdefault(bucket_of(uid, n), []).append(member(uid, device, conn))
        if not groups:
            return []
        deadline = str(self._deadline_ms(self.clock()))
        calls: list[tuple[int, list[str], list[str]]] = []
        for b, members in groups.items():
            shard = self.buckets[b]
            keys = [shard.k_exp, shard.k_ring]
            for i in range(0, len(members), TOUCH_CHUNK):
                chunk = members[i : i + TOUCH_CHUNK]
                args = [deadline] * (2 * len(chunk))
                args[1::2] = chunk
                calls.append((b, keys, [*args, "0"]))
        replies = await self._scripts("touch", calls)
        missing: list[tuple[str, str, str]] = []
        for (b, _keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                dropped = (len(args) - 1) // 2
                self._stats.of(ENGINE).dropped_heartbeats += dropped
                log.warning("heartbeats of bucket %d dropped (%d): %s", b, dropped, reply)
                continue
            missing += (split_member(m) for m in reply)
        return missing

    async def _scripts(
        self, name: str, calls: Sequence[tuple[int, Sequence[str], Sequence[str]]]
    ) -> list[Any]:
        """Script calls, each on its bucket's master (``_send``); each reply or its
        exception. NOSCRIPT (a promoted replica, a restarted node): loaded everywhere,
        those calls sent again."""
        script = self.link.scripts[name]
        replies = await self._send(
            [(self.buckets[b].slot, ("EVALSHA", script.sha, len(k), *k, *a)) for b, k, a in calls]
        )
        again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if again:
            try:
                await self.client.script_load(script.script)
            except RedisError as exc:
                log.warning("script %s not loaded: %s", name, exc)
                return replies
            retried = await self._send(
                [
                    (
                        self.buckets[calls[i][0]].slot,
                        ("EVALSHA", script.sha, len(calls[i][1]), *calls[i][1], *calls[i][2]),
                    )
                    for i in again
                ]
            )
            for i, r in zip(again, retried, strict=True):
                replies[i] = r
        return replies

    async def _send(self, slotted: Sequence[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """A batch on the fast path (``send_by_master``: packed in C, one round trip per
        master). A master that cannot be reached: the slot map is read again (a replica
        may have taken over) and those commands sent once more; a MOVED or ASK while slots
        move, or a TRYAGAIN: sent again through redis-py's cluster pipeline, which follows
        the redirection and patches the map. Whatever still fails is answered as an error
        (heartbeats dropped, users unknown), never retried for long inside a batch."""
        await self.link.ready()
        replies = await send_by_master(self.client, slotted)
        down = [
            i
            for i, r in enumerate(replies)
            if isinstance(r, (RedisConnectionError, RedisTimeoutError))
        ]
        if down and await self._refresh_map():
            again = await send_by_master(self.client, [slotted[i] for i in down])
            for i, r in zip(down, again, strict=True):
                replies[i] = r
        moved = [
            i
            for i, r in enumerate(replies)
            if isinstance(r, ResponseError)
            and not isinstance(r, NoScriptError)
            and not _script_error(r)
        ]
        if moved:
            again = await self._pipeline([slotted[i][1] for i in moved])
            for i, r in zip(moved, again, strict=True):
                replies[i] = r
        return replies

    async def _refresh_map(self) -> bool:
        """Read the slot map from a node that answers (at most every ``REFRESH_S``); False
        when none answered."""
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed_at < REFRESH_S:
                return True
            try:
                await self.client.nodes_manager.initialize()
            except RedisError as exc:
                log.warning("redis cluster: slot map not read (%s)", exc)
                return False
            finally:
                self._refreshed_at = time.monotonic()
            return True

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands in one cluster pipeline (by master, concurrently); each reply or its
        exception. A pipeline that fails whole (a node down mid-send) is answered command by
        command, each following the cluster on its own."""
        await self.link.ready()
        pipe = self.client.pipeline()
        for command in commands:
            pipe.execute_command(*command)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except RedisError as exc:  # a node down mid-send: every command answered with it
            log.warning("redis cluster pipeline failed: %s", exc)
            return [exc] * len(commands)

    async def locate(self, uids: Sequence[str]) -> Locations:
        """MGETs per bucket (one slot each), in one cluster pipeline; users whose bucket
        cannot be read come back in ``unknown``."""
        groups: dict[int, list[str]] = {}
        n = len(self.buckets)
        for uid in uids:
            groups.setdefault(bucket_of(uid, n), []).append(uid)
        if not groups:
            return Locations()
        asked: list[list[str]] = []
        commands: list[tuple[int, tuple[Any, ...]]] = []
        for b, group in groups.items():
            shard = self.buckets[b]
            key = shard.keys.users.__add__
            for i in range(0, len(group), MGET_CHUNK):
                chunk = group[i : i + MGET_CHUNK]
                asked.append(chunk)
                commands.append((shard.slot, ("MGET", *map(key, chunk))))
        replies = await self._send(commands)
        good = [r for r in replies if not isinstance(r, Exception)]
        unknown = [
            u
            for chunk, r in zip(asked, replies, strict=True)
            if isinstance(r, Exception)
            for u in chunk
        ]
        return Locations([split_values(good)], unknown=unknown)

    async def counts(self) -> Counts:
        """Every bucket's counters (HGETALL each, one pipeline): exact, since a bucket's
        counters live and move with its users."""
        replies = await self._pipeline([("HGETALL", s.k_cnt) for s in self.buckets])
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise ShardUnavailable(ENGINE, f"counters: {failed}")
        parts = []
        for raw in replies:
            counters = {}
            for k, v in dict(raw).items():
                try:
                    counters[str(k)] = int(v)
                except ValueError:
                    continue
            parts.append(Counts.from_counters(counters))
        return Counts.add(parts)

    async def sweep(self, limit: int = 10_000) -> list[Presence]:
        """Expired entries offline, bucket by bucket (those with any due, found in one
        pipeline of ZRANGEBYSCORE LIMIT 0 1)."""
        now = self.clock()
        now_ms = int(now * 1000)
        due = await self._pipeline(
            [("ZRANGEBYSCORE", s.k_exp, "-inf", now_ms, "LIMIT", 0, 1) for s in self.buckets]
        )
        todo = [
            s for s, d in zip(self.buckets, due, strict=True) if d and not isinstance(d, Exception)
        ]
        parts = await asyncio.gather(*(self._gated(s.sweep(now_ms, limit, now)) for s in todo))
        return list(chain.from_iterable(parts))

    async def evict_node(self, node: str, batch: int = 1000, max_batches: int = 10_000) -> int:
        """Every entry of a dead node offline, bucket by bucket (those whose node index
        holds any)."""
        sizes = await self._pipeline([("SCARD", s.keys.node(node)) for s in self.buckets])
        todo = [s for s, n in zip(self.buckets, sizes, strict=True) if isinstance(n, int) and n]

        async def drain(s: BucketShard) -> int:
            total = 0
            for _ in range(max_batches):
                removed = await s.evict_node(node, batch, self.clock())
                total += removed
                if not removed:
                    break
            return total

        return sum(await asyncio.gather(*(self._gated(drain(s)) for s in todo)))

    async def event_positions(self) -> dict[str, str]:
        replies = await self._pipeline(
            [("XREVRANGE", s.k_ev, "+", "-", "COUNT", 1) for s in self.buckets]
        )
        out = {}
        for s, r in zip(self.buckets, replies, strict=True):
            if isinstance(r, Exception):
                raise ShardUnavailable(ENGINE, f"events: {r}")
            out[s.id] = str(r[0][0]) if r else "0-0"
        return out

    def events(
        self,
        block_ms: int = 1000,
        start: str | Mapping[str, str] = "$",
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[PresenceEvent]:
        """Every bucket's events, each bucket (so each user) in order: see
        ``cluster_events.follow_buckets``."""
        return follow_buckets(self, block_ms, start, stop)

    async def status(self) -> dict[str, Any]:
        """The engine, its members (masters with their slots, replicas with their master)
        and each one's health, as CLUSTER NODES says."""
        try:
            nodes: Any = await self.client.execute_command(
                "CLUSTER NODES", target_nodes=RedisCluster.RANDOM
            )
        except RedisError as exc:
            raise ShardUnavailable(ENGINE, f"cluster nodes: {exc}") from exc
        members = members_of(nodes)
        healthy = all(m.health == "ok" for m in members)
        covered = sum(m.slots for m in members if m.role == "master" and m.health == "ok")
        return {
            "engine": ENGINE,
            "healthy": healthy and covered == 16384,
            "buckets": len(self.buckets),
            "slots_served": covered,
            "members": [m.public() for m in members],
        }

    async def close(self) -> None:
        await self.link.close()
