"""One shard's connection to Redis: a bounded pool, the Lua scripts (loaded once, run by
SHA), pipelines packed in C, and Redis's replies mapped to our errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from control.common.errors import BackendUnavailable
from control.presence.keys import RedisKeys
from control.presence.model import SEP, Presence, StaleRing, split_records

SCRIPTS = (
    "online",
    "touch",
    "offline",
    "set_status",
    "sweep",
    "evict_node",
    "replace_out",
    "adopt",
    "release",
    "fence",
)
MOVE_PIPELINE = 8  # the mover's adopt / release calls sent at once on one connection
T = TypeVar("T")
Keep = Callable[[str], bool] | None  # which uids a scan reads (None: all)
STALE = "STALE_RING "  # the error reply of a fenced script (see ring_check in _lib.lua)


def _load(name: str) -> str:
    """A script with the shared helpers of ``_lib.lua`` in front of it."""
    folder = resources.files("control.presence") / "lua"
    return (folder / "_lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


def stale_version(exc: ResponseError) -> int | None:
    """The served version a fenced script's refusal names; None for any other error."""
    text = str(exc)
    if not text.startswith(STALE):
        return None
    try:
        return int(text[len(STALE) :])
    except ValueError:
        return None


def stored_int(value: object) -> int:
    """A served version or move epoch as stored (absent or not a number: 0)."""
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern (a key prefix may hold ``*?[]\\``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def refuse_older(ring_version: int, served: object) -> None:
    """A read carrying an older ring version than the shard serves is refused (reads never
    raise the served version: only a write fences)."""
    version = stored_int(served)
    if ring_version < version:
        raise StaleRing(version)


# The mover's script calls, built here so RedisShard stays about the shard. A call is
# (KEYS, ARGV) without the fencing pair (RedisShard adds it).
Call = tuple[list[str], list[str]]


def move_classes(
    keys: RedisKeys, entries: Sequence[Presence]
) -> tuple[list[str], list[str], list[int]]:
    """The node index keys, the arguments naming the nodes and the counter classes (node,
    region, platform), and each entry's class (1-based): the mover's scripts then count
    and index without taking a record apart."""
    classes: dict[tuple[str, str, str], int] = {}
    of = [classes.setdefault((p.node, p.region, p.platform), len(classes) + 1) for p in entries]
    names = list(dict.fromkeys(node for node, *_ in classes))
    head = [str(len(names)), *names, str(len(classes))]
    for cls in classes:
        head += cls
    return [keys.node(n) for n in names], head, of


def adopt_call(keys: RedisKeys, chunk: Sequence[tuple[Presence, int]], now_ms: int) -> Call:
    """One adopt.lua call for a chunk of (entry, deadline ms)."""
    node_keys, head, of = move_classes(keys, [p for p, _ in chunk])
    kk = [keys.expiry, keys.counters, *node_keys]
    args = [str(now_ms), *head]
    user, tomb = keys.user, keys.tombstone
    for (p, deadline_ms), cls in zip(chunk, of, strict=True):
        m = p.member
        kk += (user(p.uid), tomb(m))
        args += (p.device, p.pack(), m, str(deadline_ms), str(cls))
    return kk, args


def release_scanned_call(keys: RedisKeys, chunk: Sequence[Presence]) -> Call:
    """One release.lua call in its "exact" mode for a chunk of scanned entries."""
    node_keys, head, of = move_classes(keys, chunk)
    args = ["exact", *head]
    for p, cls in zip(chunk, of, strict=True):
        args += (p.member, p.pack(), str(cls))
    user = keys.user
    return [keys.expiry, keys.counters, *node_keys, *(user(p.uid) for p in chunk)], args


def groups(calls: list[T]) -> list[list[T]]:
    """Script calls in groups of ``MOVE_PIPELINE``, each group one pipelined round trip."""
    return [calls[i : i + MOVE_PIPELINE] for i in range(0, len(calls), MOVE_PIPELINE)]


class RedisLink:
    def __init__(self, shard_id: str, url: str, max_connections: int = 64) -> None:
        self.shard_id = shard_id
        self.url = url
        # A bounded pool that queues: a login storm waits for a connection instead of
        # opening thousands of them (or failing with "Too many connections").
        if url.startswith("redis+sentinel://"):  # a replicated shard: follows failovers
            from control.presence.sentinel import sentinel_master

            self.redis = sentinel_master(url, max_connections)
            self.scripts = {name: self.redis.register_script(_load(name)) for name in SCRIPTS}
            return
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
        self.scripts = {name: self.redis.register_script(_load(name)) for name in SCRIPTS}

    def unavailable(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"redis shard {self.shard_id} ({self.url}): {exc}")

    def error(self, exc: RedisError) -> Exception:
        """Our error for a Redis error: StaleRing for a fenced script's refusal, else
        BackendUnavailable."""
        if isinstance(exc, ResponseError):
            served = stale_version(exc)
            if served is not None:
                return StaleRing(served)
        return self.unavailable(exc)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.scripts[name](keys=list(keys), args=list(args))
        except RedisError as exc:
            raise self.error(exc) from exc

    async def run_packed(
        self, name: str, keys: Sequence[str], arg_chunks: Sequence[Sequence[str]]
    ) -> list[Any]:
        """One script call per chunk of arguments, packed by hiredis and pipelined; all sent
        again once the script is loaded when the shard forgot it (a restart), so the
        script must be safe to run twice."""
        return await self.run_packed_calls(name, [(keys, args) for args in arg_chunks])

    async def run_packed_calls(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[str]]]
    ) -> list[Any]:
        """One script call per (keys, arguments), packed by hiredis and pipelined (as
        ``run_packed``, with keys of their own: the mover's batches)."""
        script = self.scripts[name]
        head = ("EVALSHA", script.sha)
        command = b"".join(
            hiredis.pack_command((*head, str(len(keys)), *keys, *args))  # type: ignore[arg-type]
            for keys, args in calls
        )
        try:
            return await self.packed(command, len(calls))
        except NoScriptError:
            try:
                await self.redis.script_load(script.script)
            except RedisError as exc:
                raise self.unavailable(exc) from exc
            return await self.packed(command, len(calls))

    async def packed(self, command: bytes, replies: int) -> list[Any]:
        """Send already-packed commands on one pooled connection and read their replies.
        Every reply is read even after an error reply (the connection stays in step); the
        first error is raised then: NoScriptError as is (the caller loads the script and
        sends again), a fenced refusal as StaleRing, anything else as unavailable."""
        pool = self.redis.connection_pool
        try:
            conn = await pool.get_connection()
        except RedisError as exc:
            raise self.unavailable(exc) from exc
        out: list[Any] = []
        refused: ResponseError | None = None
        try:
            await conn.send_packed_command(command)
            for _ in range(replies):
                try:
                    out.append(await conn.read_response())
                except ResponseError as exc:  # an error reply, read whole
                    refused = refused or exc
                    out.append(None)
        except BaseException as exc:
            # A reply left half-read must not reach the connection's next user.
            await conn.disconnect()
            if isinstance(exc, RedisError):
                raise self.unavailable(exc) from exc
            raise
        finally:
            await pool.release(conn)
        if refused is not None:
            if isinstance(refused, NoScriptError):
                raise refused
            raise self.error(refused) from refused
        return out

    async def scan(
        self, prefix: str, expiry: str, cursor: str, count: int, keep: Keep = None
    ) -> tuple[str, list[tuple[Presence, int]], int]:
        """A SCAN over the user keys (an entry present for the whole scan comes back at
        least once), the values of those whose uid ``keep`` takes, and their scores in the
        expiry index (an entry gone meanwhile has none: left out); with how many values
        were malformed. The reads are packed by hiredis in C."""
        try:
            match = glob_escape(prefix) + "*"
            raw_cursor, raw_keys = await self.redis.scan(int(cursor), match=match, count=count)
        except RedisError as exc:
            raise self.unavailable(exc) from exc
        except ValueError:
            raise ValueError(f"not a scan cursor: {cursor!r}") from None
        keys = [str(k) for k in raw_keys]
        if keep is not None:  # the uid is in the key: no value read for the others
            start = len(prefix)
            keys = [k for k in keys if keep(k[start:])]
        if not keys:
            return str(raw_cursor), [], 0
        values = (await self.packed(hiredis.pack_command(("MGET", *keys)), 1))[0]  # type: ignore[arg-type]
        fields, skipped = split_records([str(v) for v in values if v])
        found = [Presence.unpack(SEP.join(fields[i : i + 3])) for i in range(0, len(fields), 3)]
        if keep is not None:
            found = [p for p in found if keep(p.uid)]
        if not found:
            return str(raw_cursor), [], skipped
        command = hiredis.pack_command(("ZMSCORE", expiry, *(p.member for p in found)))  # type: ignore[arg-type]
        scores = (await self.packed(command, 1))[0]
        entries = [(p, int(float(s))) for p, s in zip(found, scores, strict=True) if s is not None]
        return str(raw_cursor), entries, skipped

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


__all__ = [
    "SCRIPTS",
    "Call",
    "RedisLink",
    "adopt_call",
    "glob_escape",
    "groups",
    "refuse_older",
    "release_scanned_call",
    "stale_version",
    "stored_int",
]
