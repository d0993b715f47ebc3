"""Presence entries, events and counts. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from control.common.errors import BackendUnavailable, RetryableError

Status = Literal["online", "busy", "away", "invisible"]
STATUSES: tuple[str, ...] = ("online", "busy", "away", "invisible")
# Separators of stored records; neither is allowed in any field (see PresenceCluster.online).
SEP = "\x1f"  # between uid, node and the rest, and between records
RS = "\x1e"  # between the rest's fields


def has_separator(value: str) -> bool:
    return SEP in value or RS in value


class StaleRing(RetryableError):
    """A shard serves a newer ring than the caller's: the caller reloads the ring and
    retries (fencing, as Redis Cluster's MOVED does)."""

    def __init__(self, served: int) -> None:
        self.served = served
        super().__init__(f"ring version {served} is served here")


class ShardUnavailable(BackendUnavailable):
    """One shard of the status cluster cannot be reached (or its breaker is open)."""

    def __init__(self, shard: str, why: str = "") -> None:
        self.shard = shard
        super().__init__(f"presence shard {shard} is unavailable" + (f": {why}" if why else ""))


class Presence(NamedTuple):
    """One (user, device) entry: where it is connected and since when it was last heard.

    A named tuple: ``locate`` builds thousands per call, and a tuple is several times
    cheaper to create than a frozen dataclass.
    """

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
        """The stored record, every field but ``last_seen``: ``uid␟node␟rest`` with the rest
        ␞-separated. It names its own user, so a batch read can return bare records back to
        back; and a reader that wants only uid and node (a push) splits out three strings."""
        rest = RS.join(
            (self.device, self.conn, str(self.epoch), self.status, self.region, self.platform)
        )
        return f"{self.uid}{SEP}{self.node}{SEP}{rest}"

    @classmethod
    def unpack(cls, packed: str, last_seen: float = 0.0) -> Presence:
        uid, node, rest = packed.split(SEP)
        device, conn, epoch, status, region, platform = rest.split(RS)
        return cls(uid, device, node, conn, int(epoch), status, region, platform, last_seen)  # type: ignore[arg-type]

    def with_status(self, status: Status) -> Presence:
        return self._replace(status=status)

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


FIELDS = 3  # SEP-fields of a packed record: uid, node, rest
REST_SEPS = 5  # RS in a record's rest: device, conn, epoch, status, region, platform


def split_records(values: list[str]) -> tuple[list[str], int]:
    """The flat fields of stored values (each a user's records back to back), and how many
    values were skipped as malformed. One join and one split for the whole batch; a value
    that is not whole records (written by hand, or by another version) would shift every
    record after it, so when the counts do not add up the values are split one by one and
    the bad ones left out."""
    joined = SEP.join(values)
    fields = joined.split(SEP) if joined else []
    if len(fields) % FIELDS == 0 and joined.count(RS) == len(fields) // FIELDS * REST_SEPS:
        return fields, 0
    good: list[str] = []
    skipped = 0
    for value in values:
        parts = value.split(SEP)
        if len(parts) % FIELDS == 0 and all(
            rest.count(RS) == REST_SEPS for rest in parts[FIELDS - 1 :: FIELDS]
        ):
            good.extend(parts)
        else:
            skipped += 1
    return good, skipped


class Locations(Mapping[str, list[Presence]]):
    """What ``locate`` found: uid -> entries, read lazily from packed records.

    A push needs only "which node holds which users"; :meth:`by_node` and :meth:`uids`
    answer that straight from the flat record fields (C-speed slicing), and an entry becomes
    a :class:`Presence` only when someone asks for it.
    """

    __slots__ = ("_chunks", "_index", "unknown")

    def __init__(
        self,
        chunks: Iterable[list[str]] = (),
        entries: Mapping[str, list[Presence]] | None = None,
        unknown: Iterable[str] = (),
    ) -> None:
        self._chunks = [c for c in chunks if c]  # each: FIELDS strings per record
        self._index: dict[str, list[Presence]] | None = dict(entries) if entries else None
        # Users whose shard could not be read: neither online nor offline, as far as we know.
        self.unknown: frozenset[str] = frozenset(unknown)
        if entries and self._chunks:
            raise ValueError("give packed chunks or entries, not both")

    @classmethod
    def combine(cls, parts: Iterable[Locations]) -> Locations:
        merged = cls()
        unknown: set[str] = set()
        for part in parts:
            merged._chunks.extend(part._chunks)
            if part._index:
                merged._index = {**(merged._index or {}), **part._index}
            unknown |= part.unknown
        merged.unknown = frozenset(unknown)
        return merged

    @classmethod
    def overlay(cls, primary: Locations, secondary: Locations) -> Locations:
        """``primary``'s entries, and ``secondary``'s for the (uid, device) pairs primary
        lacks: a migration's reads, new owner first, previous owner second."""
        extra = secondary._entries()
        unknown = primary.unknown | secondary.unknown
        if not extra:
            if unknown == primary.unknown:
                return primary
            return cls.combine([primary, cls(unknown=unknown)])
        overlap = primary.uids() & extra.keys()
        if not overlap:  # the usual case: disjoint users, no entry materialized
            return cls.combine([primary, cls(entries=extra, unknown=unknown)])
        index = {uid: list(entries) for uid, entries in primary._entries().items()}
        for uid, entries in extra.items():
            have = index.setdefault(uid, [])
            devices = {p.device for p in have}
            have.extend(p for p in entries if p.device not in devices)
        return cls(entries=index, unknown=unknown)

    def _entries(self) -> dict[str, list[Presence]]:
        if self._chunks:
            index = dict(self._index or {})
            make = Presence._make
            for f in self._chunks:
                for uid, node, rest in zip(f[0::FIELDS], f[1::FIELDS], f[2::FIELDS], strict=True):
                    # Inlined Presence.unpack: this runs once per entry of a big lookup.
                    device, conn, epoch, status, region, platform = rest.split(RS)
                    entry = make(
                        (uid, device, node, conn, int(epoch), status, region, platform, 0.0)
                    )
                    known = index.setdefault(uid, [])
                    if entry not in known:  # a uid asked twice came back twice: once here
                        known.append(entry)
            self._index, self._chunks = index, []
        if self._index is None:
            self._index = {}
        return self._index

    def __getitem__(self, uid: str) -> list[Presence]:
        return self._entries()[uid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def uids(self) -> set[str]:
        found: set[str] = set(self._index or ())
        for f in self._chunks:
            found.update(f[0::FIELDS])
        return found

    def by_node(self) -> dict[str, set[str]]:
        """node -> users with an entry there (a user on two devices may be on two nodes)."""
        out: dict[str, set[str]] = {}
        for f in self._chunks:
            for node, uid in zip(f[1::FIELDS], f[0::FIELDS], strict=True):
                group = out.get(node)
                if group is None:
                    out[node] = {uid}
                else:
                    group.add(uid)
        for uid, entries in (self._index or {}).items():
            for e in entries:
                out.setdefault(e.node, set()).add(uid)
        return out


def member(uid: str, device: str, conn: str) -> str:
    return f"{uid}{SEP}{device}{SEP}{conn}"


def split_member(value: str) -> tuple[str, str, str]:
    uid, device, conn = value.split(SEP)
    return uid, device, conn


EventKind = Literal["online", "offline", "status"]
EVENT_KINDS: frozenset[str] = frozenset(("online", "offline", "status"))


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
