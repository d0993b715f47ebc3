"""Replicated ring shards: a shard URL ``redis+sentinel://host:port[,host:port]/master-name``
names a Sentinel-managed master; the shard's client asks the sentinels where the master is
and asks again when a connection to it breaks, so after a failover it follows the new one."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0


def parse_sentinel_url(url: str) -> SentinelURL:
    """``redis+sentinel://h1:p1,h2:p2/name[/db]``; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ValueError(f"{url!r}: expected {SCHEME}://host:port[,host:port]/master-name")
    hosts = []
    for item in parts.netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{url!r}: sentinel {item!r} is not host:port")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{url!r}: expected /master-name or /master-name/db after the hosts")
    return SentinelURL(tuple(hosts), path[0], int(path[1]) if len(path) == 2 else 0)


def sentinel_master(url: str, max_connections: int) -> aioredis.Redis:
    """A client of the master the sentinels name now (and next, after a failover)."""
    spec = parse_sentinel_url(url)
    sentinel = Sentinel(list(spec.sentinels), socket_timeout=2, socket_connect_timeout=2)
    return sentinel.master_for(
        spec.master,
        redis_class=aioredis.Redis,
        db=spec.db,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        max_connections=max_connections,
    )
