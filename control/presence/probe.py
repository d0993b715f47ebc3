"""Is a shard URL answering? Asked before a shard joins the ring, so that an unreachable
URL is refused with its reason and nothing is written."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from control.presence.resize import is_embedded

PROBE_TIMEOUT_S = 2.0  # a healthy shard answers PING in well under a millisecond


async def unreachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the shard at ``url`` does not answer a PING within ``timeout_s``; None when it
    does. An ``embedded:`` shard lives in this process: it always answers."""
    if is_embedded(url):
        return None
    try:
        if url.startswith("redis+sentinel://"):
            from control.presence.sentinel import sentinel_master

            client = sentinel_master(url, 2)
        else:
            client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry_on_timeout=False,
            )
    except (ValueError, RedisError) as exc:
        return f"{url}: {exc}"
    try:
        # wait_for as well: the socket timeouts do not bound a DNS lookup.
        await asyncio.wait_for(client.ping(), timeout_s)
    except TimeoutError:
        return f"{url}: no answer to PING within {timeout_s:g}s"
    except (RedisError, OSError) as exc:
        return f"{url}: {exc or type(exc).__name__}"
    finally:
        await client.aclose()
    return None
