"""A shard on a real Redis server; each write is one Lua script (loaded once, run by SHA)
and checks the ring version the shard serves in the same call (fencing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from itertools import chain
from typing import Any

import hiredis
from redis.exceptions import RedisError

from control.common.errors import BackendUnavailable
from control.presence.keys import RedisKeys
from control.presence.model import (
    EVENT_KINDS,
    SEP,
    Locations,
    Presence,
    PresenceEvent,
    Status,
    split_records,
)
from control.presence.redis_link import (
    Call,
    Keep,
    RedisLink,
    adopt_call,
    groups,
    refuse_older,
    release_scanned_call,
    stored_int,
)
from control.presence.store import EVENTS_MAXLEN, TOMBSTONE_S, ShardStore

log = logging.getLogger(__name__)
LOGIN_BATCH = 500
MGET_CHUNK = 5_000  # keys per MGET: bounds one command's time on the shard
TOUCH_CHUNK = 5_000  # heartbeats per script call, for the same reason
MOVE_CHUNK = 1_000  # entries per adopt / release call, for the same reason
# A script names the node index keys it was missing and runs again with them: each round
# adds at least one key, and only a concurrent change can make another round needed.
KEY_ROUNDS = 4
HOME_NODES_MAX = 64  # nodes this process logs users in on (one per access node)
SWEPT_NODES_MAX = 4096  # nodes the sweep met: every node of a large cluster

# A login waiting for its batch: entry, deadline ms, now, ring version, its answer.
Login = tuple[Presence, int, float, int, asyncio.Future[Presence | None]]


def parse_events(shard_id: str, entries: Any) -> list[PresenceEvent]:
    """One stream's XREAD entries as events (an entry not of ours, added by hand: skipped)."""
    events = []
    for event_id, f in entries:
        try:
            kind, at = f["k"], float(f.get("t", 0))
            if kind not in EVENT_KINDS:
                raise ValueError(kind)
            event = PresenceEvent(
                kind, f["u"], f["d"], f["n"], f["c"], f.get("r", ""), at, event_id, shard_id
            )
        except (KeyError, ValueError):
            log.warning("redis shard %s: skipping event %s: %r", shard_id, event_id, f)
            continue
        events.append(event)
    return events


class RedisShard(ShardStore):
    def __init__(
        self,
        shard_id: str,
        url: str,
        timeout_s: float,
        key_prefix: str = "imctl:",
        maxlen: int = EVENTS_MAXLEN,
        max_connections: int = 64,
        link: RedisLink | None = None,
    ) -> None:
        super().__init__(shard_id, timeout_s)
        self.url = url
        self.prefix = key_prefix
        self.keys = RedisKeys(key_prefix)
        self.maxlen = maxlen
        # ``link``: a connection shared with other stores (a Redis Cluster's buckets)
        self.link = RedisLink(shard_id, url, max_connections) if link is None else link
        self.redis = self.link.redis
        self._logins: list[Login] = []
        self._login_flush: asyncio.Future[None] | None = None
        self.k_exp = self.keys.expiry
        self.k_cnt = self.keys.counters
        self.k_ev = self.keys.events
        self.k_ring = self.keys.ring
        # Node index keys offered to the scripts that drop entries before they ask: the
        # nodes this process logs users in on (an access node's own) and the ones the
        # sweep met, so a script rarely has to name a missing key.
        self._home: dict[str, None] = {}
        self._swept: dict[str, None] = {}

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        return self.link.unavailable(exc)

    def user_key(self, uid: str) -> str:
        return self.keys.user(uid)

    def _node_args(self, nodes: Sequence[str]) -> tuple[list[str], list[str]]:
        """The node index keys and the node names, in the same order, for a script."""
        return [self.keys.node(n) for n in nodes], list(nodes)

    @staticmethod
    def _remember(known: dict[str, None], nodes: Sequence[str], limit: int) -> None:
        for node in nodes:
            if node not in known:
                if len(known) >= limit:
                    known.clear()
                known[node] = None

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.link.run(name, keys, args)

    async def _run_fenced(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        ring_version: int,
        packed: bool = False,
    ) -> Any:
        """A fenced script: the served-version key and the caller's ring version go last
        (``ring_check`` in _lib.lua takes them off); StaleRing when the shard serves newer.
        ``packed``: packed by hiredis in C (thousands of arguments: a mover's batch)."""
        keys, args = (*keys, self.k_ring), (*args, ring_version)
        if packed:
            return (await self._run_packed(name, keys, [args]))[0]
        return await self._run(name, keys, args)

    async def _run_packed(
        self, name: str, keys: Sequence[str], arg_chunks: Sequence[Sequence[str]]
    ) -> list[Any]:
        return await self.link.run_packed(name, keys, arg_chunks)

    async def _packed(self, command: bytes, replies: int) -> list[Any]:
        return await self.link.packed(command, replies)

    # TODO(merge, issue 14): ``ring_version`` gets no default once ring-core's cluster
    # passes it on every call (the interface has none); 0 is refused by any fenced shard.
    async def online(
        self, p: Presence, deadline_ms: int, now: float, *, ring_version: int
    ) -> Presence | None:
        """Logins that arrive in the same loop iteration go to Redis in one script call:
        under a reconnect storm that turns thousands of round trips into a few."""
        future: asyncio.Future[Presence | None] = asyncio.get_running_loop().create_future()
        self._logins.append((p, deadline_ms, now, ring_version, future))
        if self._login_flush is None:
            self._login_flush = asyncio.ensure_future(self._flush_logins())
        return await future

    async def _flush_logins(self) -> None:
        await asyncio.sleep(0)  # let this iteration's other logins join the batch
        batch, self._logins, self._login_flush = self._logins, [], None
        # One call carries one ring version: a login routed by an older ring than its
        # neighbours' must be refused on its own.
        by_version: dict[int, list[Login]] = {}
        for login in batch:
            by_version.setdefault(login[3], []).append(login)
        for logins in by_version.values():
            for start in range(0, len(logins), LOGIN_BATCH):
                await self._settle(logins[start : start + LOGIN_BATCH])

    async def _settle(self, chunk: Sequence[Login]) -> None:
        try:
            olds = await self._online_chunk(chunk)
        except BaseException as exc:
            for *_rest, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_rest, future), old in zip(chunk, olds, strict=True):
            if not future.done():
                future.set_result(Presence.unpack(old) if old else None)

    async def _online_chunk(self, chunk: Sequence[Login]) -> list[str]:
        """One script call for a chunk of logins of one ring version (again for the logins
        whose replaced entry sat on a node whose index key the call did not have)."""
        now = f"{chunk[-1][2]:.3f}"
        version = chunk[0][3]
        nodes = dict.fromkeys(p.node for p, *_rest in chunk)
        self._remember(self._home, list(nodes), HOME_NODES_MAX)
        olds: list[str | None] = [None] * len(chunk)
        todo = list(range(len(chunk)))
        for _round in range(KEY_ROUNDS):
            node_keys, names = self._node_args(list(nodes))
            args: list[Any] = [self.maxlen, now, len(names), *names]
            user_keys = []
            for i in todo:
                p, deadline_ms, *_rest = chunk[i]
                args += (p.uid, p.device, p.pack(), p.member, deadline_ms)
                user_keys.append(self.user_key(p.uid))
            keys = (self.k_exp, self.k_cnt, self.k_ev, *node_keys, *user_keys)
            replies = await self._run_fenced("online", keys, args, version)
            again = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, list):  # its old entry is on a node not passed
                    nodes.update(dict.fromkeys(reply))
                    again.append(i)
                else:
                    olds[i] = reply
            if not again:
                return [old or "" for old in olds]
            todo = again
        raise BackendUnavailable(f"redis shard {self.id}: logins kept moving between nodes")

    async def touch(
        self, members: Sequence[str], deadline_ms: int, *, ring_version: int
    ) -> list[str]:
        if not members:
            return []
        # Interleaved as ZADD wants them, and packed in C by hiredis: redis-py's packer
        # walks arguments in Python, which for a batch of thousands cost more than Redis.
        # Each call ends with the ring version (fencing: one GET in the script).
        version = str(ring_version)
        args = [str(deadline_ms)] * (2 * len(members))
        args[1::2] = members
        step = 2 * TOUCH_CHUNK
        chunks = [[*args[i : i + step], version] for i in range(0, len(args), step)]
        replies = await self._run_packed("touch", (self.k_exp, self.k_ring), chunks)
        return list(chain.from_iterable(replies))

    async def offline(
        self,
        uid: str,
        device: str,
        conn: str,
        reason: str,
        now: float,
        *,
        ring_version: int,
        tombstone: bool = False,
    ) -> bool:
        nodes = list(self._home)
        tomb = self.keys.tombstone(f"{uid}{SEP}{device}{SEP}{conn}")
        keys = (self.user_key(uid), self.k_exp, self.k_cnt, self.k_ev, tomb)
        ttl = int(TOMBSTONE_S) if tombstone else 0  # seconds, as EXPIRE takes them
        args = (uid, device, conn, reason, f"{now:.3f}", self.maxlen, ttl)
        for _round in range(KEY_ROUNDS):
            node_keys, names = self._node_args(nodes)
            done = await self._run_fenced(
                "offline", (*keys, *node_keys), (*args, *names), ring_version
            )
            if not isinstance(done, list):
                return bool(done)
            nodes += done  # the entry's node, whose index key was not passed
        raise BackendUnavailable(f"redis shard {self.id}: {uid}'s entry kept moving")

    async def replace_out(
        self, uid: str, device: str, now: float, *, ring_version: int
    ) -> Presence | None:
        """Remove (uid, device)'s entry whatever its connection, with an offline event
        "replaced" (a login on the user's new owner while a resize runs); returns it."""
        nodes = list(self._home)
        for _round in range(KEY_ROUNDS):
            node_keys, names = self._node_args(nodes)
            old = await self._run_fenced(
                "replace_out",
                (self.user_key(uid), self.k_exp, self.k_cnt, self.k_ev, *node_keys),
                (device, f"{now:.3f}", self.maxlen, *names),
                ring_version,
            )
            if not isinstance(old, list):
                return Presence.unpack(old) if old else None
            nodes += old  # the entry's node, whose index key was not passed
        raise BackendUnavailable(f"redis shard {self.id}: {uid}'s entry kept moving")

    async def set_status(
        self, uid: str, device: str, conn: str, status: Status, now: float, *, ring_version: int
    ) -> bool:
        done = await self._run_fenced(
            "set_status",
            (self.user_key(uid), self.k_ev),
            (uid, device, conn, status, f"{now:.3f}", self.maxlen),
            ring_version,
        )
        return bool(done)

    async def locate(self, uids: Sequence[str], *, ring_version: int) -> Locations:
        """Each user's value holds all of its records back to back, so locating is plain
        MGETs whose values are joined and split once. The commands are packed by hiredis in
        C (redis-py packs argument by argument in Python, which for thousands of keys costs
        more than Redis's whole lookup) and pipelined on one connection, behind a GET of
        the served ring version: StaleRing when it is newer than the caller's."""
        if not uids:
            refuse_older(ring_version, await self._get(self.k_ring))
            return Locations()
        key = self.keys.users.__add__
        commands = [("GET", self.k_ring)] + [
            ("MGET", *map(key, uids[i : i + MGET_CHUNK])) for i in range(0, len(uids), MGET_CHUNK)
        ]
        # hiredis's stub types the argument tuple as one element
        packed = b"".join(hiredis.pack_command(c) for c in commands)  # type: ignore[arg-type]
        served, *replies = await self._packed(packed, 1 + -(-len(uids) // MGET_CHUNK))
        refuse_older(ring_version, served)
        fields, skipped = split_records(list(filter(None, chain.from_iterable(replies))))
        if skipped:
            log.warning("redis shard %s: skipped %d malformed presence values", self.id, skipped)
        return Locations([fields])

    async def who(self, uid: str, *, ring_version: int) -> list[Presence]:
        found = (await self.locate([uid], ring_version=ring_version)).get(uid, [])
        if not found:
            return []
        try:
            scores = await self.redis.zmscore(self.k_exp, [p.member for p in found])
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return [
            p._replace(last_seen=max(0.0, (s or 0) / 1000 - self.timeout_s))
            for p, s in zip(found, scores, strict=True)
        ]

    async def counters(self) -> dict[str, int]:
        try:
            raw = await self.redis.hgetall(self.k_cnt)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        counters = {}
        for k, v in raw.items():
            try:
                n = int(v)
            except ValueError:  # not one of ours: a count is never anything but an integer
                log.warning("redis shard %s: skipping counter %s=%r", self.id, k, v)
                continue
            if n:
                counters[str(k)] = n
        return counters

    async def sweep(self, now_ms: int, limit: int, now: float) -> list[Presence]:
        try:
            listed = await self.redis.zrangebyscore(self.k_exp, "-inf", now_ms, start=0, num=limit)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        due = [str(m) for m in listed]
        if not due:
            return []
        user_keys = [self.user_key(m.partition(SEP)[0]) for m in due]
        removed: list[Presence] = []
        for _round in range(KEY_ROUNDS):
            node_keys, names = self._node_args(list(self._swept))
            out, need = await self._run(
                "sweep",
                (self.k_exp, self.k_cnt, self.k_ev, *node_keys, *user_keys),
                (now_ms, f"{now:.3f}", self.maxlen, len(names), *names, *due),
            )
            removed += (Presence.unpack(record) for record in out)
            if not need:
                break
            # Remembered: the next sweeps pass them at once.
            self._remember(self._swept, need, SWEPT_NODES_MAX)
        return removed

    async def evict_node(self, node: str, limit: int, now: float) -> int:
        node_key = self.keys.node(node)
        try:
            found: Any = await self.redis.srandmember(node_key, limit)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        members = [str(m) for m in found or ()]
        if not members:
            return 0
        user_keys = [self.user_key(m.partition(SEP)[0]) for m in members]
        return int(
            await self._run(
                "evict_node",
                (node_key, self.k_exp, self.k_cnt, self.k_ev, *user_keys),
                (node, f"{now:.3f}", self.maxlen, *members),
            )
        )

    async def latest_event(self) -> str:
        try:
            newest = await self.redis.xrevrange(self.k_ev, count=1)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return str(newest[0][0]) if newest else "0-0"

    async def read_events(self, after: str, count: int, block_ms: int) -> list[PresenceEvent]:
        try:
            reply = await self.redis.xread(
                {self.k_ev: after}, count=count, block=block_ms if block_ms > 0 else None
            )
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        streams: Any = reply or []
        return [e for _stream, entries in streams for e in parse_events(self.id, entries)]

    # The ring: fencing and a resize's moves (the mover's side; no events, counts exact).

    async def _get(self, key: str) -> Any:
        try:
            return await self.redis.get(key)
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def fence(self, version: int) -> int:
        """Serve ``version`` from now on (never lowers); returns the version served."""
        return int(await self._run("fence", (self.k_ring,), (version,)))

    async def served_version(self) -> int:
        return stored_int(await self._get(self.k_ring))

    async def move_epoch(self) -> int:
        return stored_int(await self._get(self.keys.move_epoch))

    async def bump_move_epoch(self) -> int:
        try:
            return int(await self.redis.incr(self.keys.move_epoch))
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def scan(
        self, cursor: str, count: int, keep: Keep = None
    ) -> tuple[str, list[tuple[Presence, int]]]:
        """About ``count`` users' entries with their deadlines (see ``RedisLink.scan``)."""
        after, entries, skipped = await self.link.scan(
            self.keys.users, self.k_exp, cursor, count, keep
        )
        if skipped:
            log.warning("redis shard %s: skipped %d malformed presence values", self.id, skipped)
        return after, entries

    async def adopt(
        self, entries: Sequence[tuple[Presence, int]], now_ms: int, *, ring_version: int
    ) -> list[Presence]:
        """Copy entries in from their previous owner (no events; counters and indexes
        exact), skipping one when this shard has an entry for its (uid, device), a
        tombstone names it, or its deadline is not after ``now_ms``; returns those adopted.
        Chunks of ``MOVE_CHUNK`` entries, one script call each, pipelined."""
        chunks = [entries[i : i + MOVE_CHUNK] for i in range(0, len(entries), MOVE_CHUNK)]
        adopted: list[Presence] = []
        for group in groups(chunks):
            calls = [adopt_call(self.keys, chunk, now_ms) for chunk in group]
            replies = await self._run_packed_keys("adopt", calls, ring_version)
            for chunk, done in zip(group, replies, strict=True):
                adopted += (chunk[int(j) - 1][0] for j in done)
        return adopted

    async def _run_packed_keys(
        self, name: str, calls: Sequence[Call], ring_version: int
    ) -> list[Any]:
        """Fenced script calls with keys of their own, packed in C and pipelined."""
        version = str(ring_version)
        return await self.link.run_packed_calls(
            name, [((*keys, self.k_ring), (*args, version)) for keys, args in calls]
        )

    async def release_scanned(
        self, entries: Sequence[Presence], *, ring_version: int
    ) -> list[Presence]:
        """Remove the entries whose stored record is still exactly the given one (no
        events; counters and indexes exact); returns the ones it skipped."""
        chunks = [entries[i : i + MOVE_CHUNK] for i in range(0, len(entries), MOVE_CHUNK)]
        skipped: list[Presence] = []
        for group in groups(chunks):
            calls = [release_scanned_call(self.keys, chunk) for chunk in group]
            replies = await self._run_packed_keys("release", calls, ring_version)
            for chunk, (_removed, _need, left) in zip(group, replies, strict=True):
                skipped += (chunk[int(j) - 1] for j in left)
        return skipped

    async def release(self, entries: Sequence[Presence], *, ring_version: int) -> int:
        """Remove the entries still present with the same connection (no events; counters
        and indexes exact); returns how many."""
        released = 0
        for start in range(0, len(entries), MOVE_CHUNK):
            chunk = entries[start : start + MOVE_CHUNK]
            nodes = list(dict.fromkeys(p.node for p in chunk))
            user_keys = [self.user_key(p.uid) for p in chunk]
            members = [p.member for p in chunk]
            for _round in range(KEY_ROUNDS):
                node_keys, names = self._node_args(nodes)
                removed, need = await self._run_fenced(
                    "release",
                    (self.k_exp, self.k_cnt, *node_keys, *user_keys),
                    ("conn", len(names), *names, *members),
                    ring_version,
                    packed=True,
                )
                released += int(removed)
                if not need:
                    break
                # An entry of the same connection on another node (it cannot be, as a
                # connection lives on one node; a hand edit): that key too, and again.
                nodes += [str(n) for n in need if n not in nodes]
            else:
                raise BackendUnavailable(f"redis shard {self.id}: entries kept moving")
        return released

    async def close(self) -> None:
        await self.link.close()


__all__ = ["RedisShard", "parse_events"]
