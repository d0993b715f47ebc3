"""Which shard holds a user: a consistent-hash ring (uhashring, virtual nodes, weights)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import md5
from typing import Literal

from uhashring import HashRing


@dataclass(frozen=True, slots=True)
class ShardSpec:
    id: str
    url: str
    weight: int = 1


@dataclass(frozen=True)
class RingSpec:
    """The **contract** record at ``<prefix>/presence/ring`` (resizing is a later issue)."""

    version: int
    shards: tuple[ShardSpec, ...]
    previous: tuple[ShardSpec, ...] = ()
    state: Literal["stable", "migrating"] = "stable"
    vnodes: int = 160


class Ring:
    """uhashring builds the continuum (virtual nodes, weights); lookups read it directly
    with the same md5 point and bisect, several times faster than ``get_node``, and
    remember owners (a ring is immutable: a new spec makes a new Ring and a new cache)."""

    # ~100 bytes an entry with the uid it keeps alive: 25 MB at most, in every process that
    # routes users (each access node, for its heartbeats and pushes).
    CACHE_MAX = 262_144

    def __init__(self, spec: RingSpec) -> None:
        if not spec.shards:
            raise ValueError("a ring needs at least one shard")
        self.spec = spec
        self._ring = HashRing(
            nodes={s.id: {"weight": s.weight, "vnodes": spec.vnodes} for s in spec.shards}
        )
        runtime = self._ring.runtime
        self._points: list[int] = list(runtime._keys)
        self._owners: list[str] = [str(runtime._ring[p]) for p in self._points]
        self._single = spec.shards[0].id if len(spec.shards) == 1 else None
        self._cache: dict[str, str] = {}

    def _lookup(self, uid: str) -> str:
        point = int.from_bytes(md5(uid.encode()).digest(), "big")
        i = bisect_right(self._points, point)
        return self._owners[i if i < len(self._points) else 0]

    def owner(self, uid: str) -> str:
        if self._single is not None:
            return self._single
        found = self._cache.get(uid)
        if found is None:
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            found = self._cache[uid] = self._lookup(uid)
        return found

    def group(self, uids: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if self._single is not None:
            out[self._single] = list(uids)
            return out
        owner, cached = self.owner, self._cache.get
        for uid in uids:
            shard = cached(uid) or owner(uid)
            bucket = out.get(shard)
            if bucket is None:
                out[shard] = [uid]
            else:
                bucket.append(uid)
        return out
