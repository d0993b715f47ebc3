"""A shard on a real Redis server; each write is one Lua script (loaded once, run by SHA)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from importlib import resources
from itertools import chain
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

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
from control.presence.store import EVENTS_MAXLEN, ShardStore

log = logging.getLogger(__name__)
LOGIN_BATCH = 500
SCRIPTS = ("online", "touch", "offline", "set_status", "sweep", "evict_node")
MGET_CHUNK = 5_000  # keys per MGET: bounds one command's time on the shard
TOUCH_CHUNK = 5_000  # heartbeats per script call, for the same reason
# A script names the node index keys it was missing and runs again with them: each round
# adds at least one key, and only a concurrent change can make another round needed.
KEY_ROUNDS = 4
HOME_NODES_MAX = 64  # nodes this process logs users in on (one per access node)
SWEPT_NODES_MAX = 4096  # nodes the sweep met: every node of a large cluster


def _load(name: str) -> str:
    """A script with the shared helpers of ``_lib.lua`` in front of it."""
    folder = resources.files("control.presence") / "lua"
    return (folder / "_lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


class RedisShard(ShardStore):
    def __init__(
        self,
        shard_id: str,
        url: str,
        timeout_s: float,
        key_prefix: str = "imctl:",
        maxlen: int = EVENTS_MAXLEN,
        max_connections: int = 64,
    ) -> None:
        super().__init__(shard_id, timeout_s)
        self.url = url
        self.prefix = key_prefix
        self.keys = RedisKeys(key_prefix)
        self.maxlen = maxlen
        # A bounded pool that queues: a login storm waits for a connection instead of
        # opening thousands of them (or failing with "Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=5,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=10,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self._scripts = {name: self.redis.register_script(_load(name)) for name in SCRIPTS}
        self._logins: list[tuple[Presence, int, float, asyncio.Future[Presence | None]]] = []
        self._login_flush: asyncio.Future[None] | None = None
        self.k_exp = self.keys.expiry
        self.k_cnt = self.keys.counters
        self.k_ev = self.keys.events
        # Node index keys offered to the scripts that drop entries before they ask: the
        # nodes this process logs users in on (an access node's own) and the ones the
        # sweep met, so a script rarely has to name a missing key.
        self._home: dict[str, None] = {}
        self._swept: dict[str, None] = {}

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"redis shard {self.id} ({self.url}): {exc}")

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
        try:
            return await self._scripts[name](keys=list(keys), args=list(args))
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    async def _run_packed(
        self, name: str, keys: Sequence[str], arg_chunks: Sequence[Sequence[str]]
    ) -> list[Any]:
        """One script call per chunk of arguments, packed by hiredis and pipelined; all sent
        again once the script is loaded when the shard forgot it (a restart), so the
        script must be safe to run twice."""
        script = self._scripts[name]
        head = ("EVALSHA", script.sha, str(len(keys)), *keys)
        command = b"".join(
            hiredis.pack_command((*head, *args))  # type: ignore[arg-type]  # stub: one element
            for args in arg_chunks
        )
        try:
            return await self._packed(command, len(arg_chunks))
        except NoScriptError:
            try:
                await self.redis.script_load(script.script)
            except RedisError as exc:
                raise self._unavailable(exc) from exc
            return await self._packed(command, len(arg_chunks))

    async def online(
        self, p: Presence, deadline_ms: int, now: float, *, ring_version: int = 0
    ) -> Presence | None:
        """Logins that arrive in the same loop iteration go to Redis in one script call:
        under a reconnect storm that turns thousands of round trips into a few."""
        future: asyncio.Future[Presence | None] = asyncio.get_running_loop().create_future()
        self._logins.append((p, deadline_ms, now, future))
        if self._login_flush is None:
            self._login_flush = asyncio.ensure_future(self._flush_logins())
        return await future

    async def _flush_logins(self) -> None:
        await asyncio.sleep(0)  # let this iteration's other logins join the batch
        batch, self._logins, self._login_flush = self._logins, [], None
        for start in range(0, len(batch), LOGIN_BATCH):
            chunk = batch[start : start + LOGIN_BATCH]
            try:
                olds = await self._online_chunk(chunk)
            except BaseException as exc:
                for *_rest, future in chunk:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (*_rest, future), old in zip(chunk, olds, strict=True):
                if not future.done():
                    future.set_result(Presence.unpack(old) if old else None)

    async def _online_chunk(
        self, chunk: Sequence[tuple[Presence, int, float, asyncio.Future[Presence | None]]]
    ) -> list[str]:
        """One script call for a chunk of logins (again for the logins whose replaced
        entry sat on a node whose index key the call did not have)."""
        now = f"{chunk[-1][2]:.3f}"
        nodes = dict.fromkeys(p.node for p, *_rest in chunk)
        self._remember(self._home, list(nodes), HOME_NODES_MAX)
        olds: list[str | None] = [None] * len(chunk)
        todo = list(range(len(chunk)))
        for _round in range(KEY_ROUNDS):
            node_keys, names = self._node_args(list(nodes))
            args: list[Any] = [self.maxlen, now, len(names), *names]
            user_keys = []
            for i in todo:
                p, deadline_ms, _now, _f = chunk[i]
                args += (p.uid, p.device, p.pack(), p.member, deadline_ms)
                user_keys.append(self.user_key(p.uid))
            keys = (self.k_exp, self.k_cnt, self.k_ev, *node_keys, *user_keys)
            replies = await self._run("online", keys, args)
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
        self, members: Sequence[str], deadline_ms: int, *, ring_version: int = 0
    ) -> list[str]:
        if not members:
            return []
        # Interleaved as ZADD wants them, and packed in C by hiredis: redis-py's packer
        # walks arguments in Python, which for a batch of thousands cost more than Redis.
        args = [str(deadline_ms)] * (2 * len(members))
        args[1::2] = members
        step = 2 * TOUCH_CHUNK
        chunks = [args[i : i + step] for i in range(0, len(args), step)]
        replies = await self._run_packed("touch", (self.k_exp,), chunks)
        return list(chain.from_iterable(replies))

    async def offline(
        self,
        uid: str,
        device: str,
        conn: str,
        reason: str,
        now: float,
        *,
        ring_version: int = 0,
        tombstone: bool = False,
    ) -> bool:
        nodes = list(self._home)
        for _round in range(KEY_ROUNDS):
            node_keys, names = self._node_args(nodes)
            done = await self._run(
                "offline",
                (self.user_key(uid), self.k_exp, self.k_cnt, self.k_ev, *node_keys),
                (uid, device, conn, reason, f"{now:.3f}", self.maxlen, *names),
            )
            if not isinstance(done, list):
                return bool(done)
            nodes += done  # the entry's node, whose index key was not passed
        raise BackendUnavailable(f"redis shard {self.id}: {uid}'s entry kept moving")

    async def set_status(
        self, uid: str, device: str, conn: str, status: Status, now: float, *, ring_version: int = 0
    ) -> bool:
        done = await self._run(
            "set_status",
            (self.user_key(uid), self.k_ev),
            (uid, device, conn, status, f"{now:.3f}", self.maxlen),
        )
        return bool(done)

    async def locate(self, uids: Sequence[str], *, ring_version: int = 0) -> Locations:
        """Each user's value holds all of its records back to back, so locating is plain
        MGETs whose values are joined and split once. The commands are packed by hiredis in
        C (redis-py packs argument by argument in Python, which for thousands of keys costs
        more than Redis's whole lookup) and pipelined on one connection."""
        if not uids:
            return Locations()
        key = self.keys.users.__add__
        packed = b"".join(
            hiredis.pack_command(  # its stub types the argument tuple as one element
                ("MGET", *map(key, uids[i : i + MGET_CHUNK]))  # type: ignore[arg-type]
            )
            for i in range(0, len(uids), MGET_CHUNK)
        )
        replies = await self._packed(packed, -(-len(uids) // MGET_CHUNK))
        fields, skipped = split_records(list(filter(None, chain.from_iterable(replies))))
        if skipped:
            log.warning("redis shard %s: skipped %d malformed presence values", self.id, skipped)
        return Locations([fields])

    async def _packed(self, command: bytes, replies: int) -> list[Any]:
        """Send already-packed commands on one pooled connection and read their replies."""
        pool = self.redis.connection_pool
        try:
            conn = await pool.get_connection()
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        try:
            await conn.send_packed_command(command)
            return [await conn.read_response() for _ in range(replies)]
        except BaseException as exc:
            # A reply left half-read must not reach the connection's next user.
            await conn.disconnect()
            if isinstance(exc, NoScriptError):
                raise  # the caller loads the script and sends again
            if isinstance(exc, RedisError):
                raise self._unavailable(exc) from exc
            raise
        finally:
            await pool.release(conn)

    async def who(self, uid: str, *, ring_version: int = 0) -> list[Presence]:
        found = (await self.locate([uid])).get(uid, [])
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
        events = []
        streams: Any = reply or []
        for _stream, entries in streams:
            for event_id, f in entries:
                try:
                    kind, at = f["k"], float(f.get("t", 0))
                    if kind not in EVENT_KINDS:
                        raise ValueError(kind)
                    event = PresenceEvent(
                        kind, f["u"], f["d"], f["n"], f["c"], f.get("r", ""), at, event_id, self.id
                    )
                except (KeyError, ValueError):  # not one of ours (added by hand): skip it
                    log.warning("redis shard %s: skipping event %s: %r", self.id, event_id, f)
                    continue
                events.append(event)
        return events

    # TODO(ring-redis): interim stand-ins on the ring-core branch so a Redis shard still
    # serves a stable ring; the ring-redis branch replaces this file (fenced Lua scripts,
    # SCAN/adopt/release, tombstones, the move epoch). The ring_version above is unchecked.
    async def fence(self, version: int) -> int:
        raise NotImplementedError("fencing on Redis shards comes with ring-redis")

    async def served_version(self) -> int:
        return 0

    async def replace_out(
        self, uid: str, device: str, now: float, *, ring_version: int
    ) -> Presence | None:
        raise NotImplementedError("resizing Redis shards comes with ring-redis")

    async def scan(self, cursor: str, count: int) -> tuple[str, list[tuple[Presence, int]]]:
        raise NotImplementedError("resizing Redis shards comes with ring-redis")

    async def adopt(
        self, entries: Sequence[tuple[Presence, int]], now_ms: int, *, ring_version: int
    ) -> list[Presence]:
        raise NotImplementedError("resizing Redis shards comes with ring-redis")

    async def release(self, entries: Sequence[Presence], *, ring_version: int) -> int:
        raise NotImplementedError("resizing Redis shards comes with ring-redis")

    async def move_epoch(self) -> int:
        return 0

    async def bump_move_epoch(self) -> int:
        raise NotImplementedError("resizing Redis shards comes with ring-redis")

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


__all__ = ["RedisShard"]
