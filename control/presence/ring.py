"""Which shard holds a user: a consistent-hash ring (uhashring, virtual nodes, weights)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import md5
from itertools import pairwise
from typing import Literal

from uhashring import HashRing

from control.common.schema import setting

SHARD_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
MAX_WEIGHT = 100


@dataclass(frozen=True, slots=True)
class ShardSpec:
    id: str = setting(doc="shard id (stable: the ring hashes on it)", pattern=SHARD_ID_PATTERN)
    url: str = setting("", "redis://host:port/db, or embedded:<id> for an in-process shard")
    weight: int = setting(1, "share of users", ge=1, le=MAX_WEIGHT)


@dataclass(frozen=True)
class RingSpec:
    """The **contract** record at ``<prefix>/presence/ring``: the shards users live on now
    and, while ``migrating``, the ones they lived on before (``previous``)."""

    version: int = setting(doc="raised by every change; shards refuse older writers", ge=1)
    shards: tuple[ShardSpec, ...] = setting(doc="the shards users live on", min_len=1)
    previous: tuple[ShardSpec, ...] = setting((), "while migrating: the shards before")
    state: Literal["stable", "migrating"] = setting("stable", "migrating until a clean pass")
    vnodes: int = setting(160, "virtual nodes per shard on the ring", ge=1, le=10_000)

    @property
    def migrating(self) -> bool:
        return self.state == "migrating"

    def problems(self) -> list[str]:
        """What the schema cannot see: repeated shard ids or urls."""
        out = []
        for name, shards in (("shards", self.shards), ("previous", self.previous)):
            ids = [s.id for s in shards]
            if len(set(ids)) != len(ids):
                out.append(f"{name}: shard ids repeat")
            urls = [s.url for s in shards if s.url]
            if len(set(urls)) != len(urls):
                out.append(f"{name}: shard urls repeat")
        if self.state == "stable" and self.previous:
            out.append("previous: only while migrating")
        return out


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

    def lookup(self, uid: str) -> str:
        """The owner, not cached (a mover's scan meets each user once)."""
        return self._single or self._lookup(uid)

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

    def _owner_at(self, point: int) -> str:
        i = bisect_right(self._points, point)
        return self._owners[i if i < len(self._points) else 0]


HASH_SPACE = 1 << 128  # md5 points


def moved_share(before: Ring, after: Ring) -> float:
    """The share of the hash space whose owner differs between two rings: the share of
    users a resize from ``before`` to ``after`` moves, ideally. Exact: between two
    neighbouring points of either continuum both owners are constant."""
    if before._single is not None and before._single == after._single:
        return 0.0
    cuts = sorted(set(before._points) | set(after._points))
    moved = 0
    # The wrap-around arc [last, 2^128) + [0, first) is owned as the point 0 is.
    for start, end in pairwise(cuts):
        if before._owner_at(start) != after._owner_at(start):
            moved += end - start
    if before._owner_at(0) != after._owner_at(0):
        moved += HASH_SPACE - cuts[-1] + cuts[0]
    return moved / HASH_SPACE
