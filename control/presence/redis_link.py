"""One shard's connection to Redis: a bounded pool, the Lua scripts (loaded once, run by
SHA), pipelines packed in C, and Redis's replies mapped to our errors."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from control.common.errors import BackendUnavailable
from control.presence.model import StaleRing

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


class RedisLink:
    def __init__(self, shard_id: str, url: str, max_connections: int = 64) -> None:
        self.shard_id = shard_id
        self.url = url
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
        script = self.scripts[name]
        head = ("EVALSHA", script.sha, str(len(keys)), *keys)
        command = b"".join(
            hiredis.pack_command((*head, *args))  # type: ignore[arg-type]  # stub: one element
            for args in arg_chunks
        )
        try:
            return await self.packed(command, len(arg_chunks))
        except NoScriptError:
            try:
                await self.redis.script_load(script.script)
            except RedisError as exc:
                raise self.unavailable(exc) from exc
            return await self.packed(command, len(arg_chunks))

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

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


__all__ = [
    "SCRIPTS",
    "RedisLink",
    "glob_escape",
    "refuse_older",
    "stale_version",
    "stored_int",
]
