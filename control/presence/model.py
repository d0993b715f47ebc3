"""Presence entries, events and counts. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Status = Literal["online", "busy", "away", "invisible"]
STATUSES: tuple[str, ...] = ("online", "busy", "away", "invisible")
SEP = "\x1f"  # never valid in uids, devices, node ids or conn ids (see the request rules)


@dataclass(frozen=True, slots=True)
class Presence:
    """One (user, device) entry: where it is connected and since when it was last heard."""

    uid: str
    device: str
    node: str
    conn: str
    epoch: int = 0
    status: Status = "online"
    region: str = ""
    platform: str = ""
    last_seen: float = 0.0  # unix seconds of the last heartbeat (0 when not read)

    @property
    def member(self) -> str:
        """The (uid, device, conn) triple as one string: expiry and node indexes hold it."""
        return member(self.uid, self.device, self.conn)

    def pack(self) -> str:
        return SEP.join(
            (self.node, self.conn, str(self.epoch), self.status, self.region, self.platform)
        )

    @classmethod
    def unpack(cls, uid: str, device: str, packed: str, last_seen: float = 0.0) -> Presence:
        node, conn, epoch, status, region, platform = packed.split(SEP)
        return cls(uid, device, node, conn, int(epoch), status, region, platform, last_seen)  # type: ignore[arg-type]

    def with_status(self, status: Status) -> Presence:
        return replace(self, status=status)

    def public(self) -> dict[str, object]:
        return {
            "uid": self.uid,
            "device": self.device,
            "node": self.node,
            "conn": self.conn,
            "epoch": self.epoch,
            "status": self.status,
            "region": self.region,
            "platform": self.platform,
            "last_seen": self.last_seen,
        }


def member(uid: str, device: str, conn: str) -> str:
    return f"{uid}{SEP}{device}{SEP}{conn}"


def split_member(value: str) -> tuple[str, str, str]:
    uid, device, conn = value.split(SEP)
    return uid, device, conn


EventKind = Literal["online", "offline", "status"]


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    kind: EventKind
    uid: str
    device: str
    node: str
    conn: str
    reason: str = ""
    at: float = 0.0
    id: str = ""  # position in the shard's stream, for resuming
    shard: str = ""


@dataclass(frozen=True)
class Counts:
    """Exact online entries: in total and by region, node and platform."""

    total: int = 0
    by_region: Mapping[str, int] = field(default_factory=dict)
    by_node: Mapping[str, int] = field(default_factory=dict)
    by_platform: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: Mapping[str, int]) -> Counts:
        """Parse the flat counter names shards keep: ``all``, ``r:<region>``, ``n:…``, ``p:…``."""
        groups: dict[str, dict[str, int]] = {"r": {}, "n": {}, "p": {}}
        total = 0
        for name, value in counters.items():
            if value <= 0:
                continue
            if name == "all":
                total = value
            elif name[:2] in ("r:", "n:", "p:"):
                groups[name[0]][name[2:]] = value
        return cls(total, groups["r"], groups["n"], groups["p"])

    @staticmethod
    def add(parts: Iterable[Counts]) -> Counts:
        total = 0
        merged: list[dict[str, int]] = [{}, {}, {}]
        for part in parts:
            total += part.total
            for acc, src in zip(
                merged, (part.by_region, part.by_node, part.by_platform), strict=True
            ):
                for k, v in src.items():
                    acc[k] = acc.get(k, 0) + v
        return Counts(total, merged[0], merged[1], merged[2])

    def by(self, dimension: str) -> Mapping[str, int]:
        return {"region": self.by_region, "node": self.by_node, "platform": self.by_platform}[
            dimension
        ]
