"""Which shard holds a user: a consistent-hash ring (uhashring, virtual nodes, weights)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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
    def __init__(self, spec: RingSpec) -> None:
        if not spec.shards:
            raise ValueError("a ring needs at least one shard")
        self.spec = spec
        self._ring = HashRing(
            nodes={s.id: {"weight": s.weight, "vnodes": spec.vnodes} for s in spec.shards}
        )
        self._single = spec.shards[0].id if len(spec.shards) == 1 else None

    def owner(self, uid: str) -> str:
        if self._single is not None:
            return self._single
        return str(self._ring.get_node(uid))

    def group(self, uids: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        if self._single is not None:
            out[self._single] = list(uids)
            return out
        get = self._ring.get_node
        for uid in uids:
            out.setdefault(get(uid), []).append(uid)
        return out
