"""The node registry: access nodes publish a record on a lease; everyone else watches.

Key ``<prefix>/nodes/<node_id>``, value the JSON of :class:`NodeRecord`, attached to the
node's lease. A node that dies vanishes when its lease expires; a draining node stays listed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from control.common.errors import BackendUnavailable, ImctlError, LeaseNotFound
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.tasks import pause

log = logging.getLogger(__name__)

NodeState = Literal["up", "draining"]
NODE_STATES: tuple[str, ...] = ("up", "draining")


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One access node as the registry shows it (the **contract** fields and a timestamp)."""

    id: str
    endpoint: str
    region: str
    zone: str = ""
    pool: str = "default"
    version: str = "0"
    capacity: int = 10_000
    conns: int = 0
    state: NodeState = "up"
    epoch: int = 0
    weight: float = 1.0
    reported_at: float = 0.0
    internal: str = ""  # base URL of the node's internal API (push, kick), "" if none

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        """Parse a record; raises ValueError naming what is wrong."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("node record: nested too deep") from None
        if not isinstance(data, dict):
            raise ValueError("node record must be a JSON object")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}  # newer writers may add fields
        for name in ("id", "endpoint", "region"):
            if not isinstance(fields.get(name), str) or not fields[name]:
                raise ValueError(f"node record: {name} must be a non-empty string")
        for name in ("zone", "pool", "version", "internal"):
            if name in fields and not isinstance(fields[name], str):
                raise ValueError(f"node record: {name} must be a string")
        record = cls(**fields)
        if record.state not in NODE_STATES:
            raise ValueError(f"node record: unknown state {record.state!r}")
        for name in ("capacity", "conns", "epoch"):
            value = getattr(record, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"node record: {name} must be an integer >= 0")
        for name in ("weight", "reported_at"):
            value = getattr(record, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"node record: {name} must be a number >= 0")
        return record

    def is_same_report(self, other: NodeRecord) -> bool:
        """Equal apart from the report timestamp: nothing worth writing."""
        return replace(self, reported_at=0.0) == replace(other, reported_at=0.0)


# Drain requests: the admin API writes ``<prefix>/drain/<node_id>`` = {over_s, at, by}
# and the node watches its own key.
DRAIN_DEFAULT_S = 60.0
DRAIN_MAX_S = 86_400


def drain_prefix(prefix: str) -> str:
    return prefix.rstrip("/") + "/drain/"


def drain_window(over_s: Any) -> float | None:
    """A drain request's ``over_s`` as seconds, or None when it is not 0-86400 seconds."""
    if isinstance(over_s, bool) or not isinstance(over_s, (int, float)):
        return None
    return float(over_s) if 0 <= over_s <= DRAIN_MAX_S else None


@dataclass(frozen=True, slots=True)
class DrainRequest:
    """An operator's request that a node drain: over how long, when, and by whom.

    Only a whole, well-formed record is a request: anything else at a drain key (a value
    written by hand, or a node record a misrouted watch delivered) must not drain a node.
    """

    over_s: float
    at: float
    by: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DrainRequest:
        """Parse a request; raises ValueError naming what is wrong."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("drain request: nested too deep") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"drain request is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("drain request must be a JSON object")
        missing = [name for name in ("over_s", "at", "by") if name not in data]
        if missing:
            raise ValueError(f"drain request: missing {', '.join(missing)}")
        over = drain_window(data["over_s"])
        if over is None:
            raise ValueError(f"drain request: over_s must be 0-{DRAIN_MAX_S} seconds")
        at = data["at"]
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at < math.inf:
            raise ValueError("drain request: at must be a timestamp >= 0")
        if not isinstance(data["by"], str):
            raise ValueError("drain request: by must be a string")
        return cls(over, float(at), data["by"])


class Registry:
    """Node records over any :class:`KeyValueStore`."""

    def __init__(self, kv: KeyValueStore, prefix: str = "/imctl") -> None:
        self.kv = kv
        self.prefix = prefix.rstrip("/") + "/nodes/"

    def key(self, node_id: str) -> str:
        return self.prefix + node_id

    async def register(self, record: NodeRecord, ttl: int) -> Registration:
        """Grant a lease and publish ``record`` on it."""
        lease = await self.kv.grant_lease(ttl)
        stamped = replace(record, reported_at=time.time())
        await self.kv.put(self.key(record.id), stamped.to_json(), lease=lease)
        return Registration(self, lease, ttl, stamped)

    async def list(self) -> tuple[dict[str, NodeRecord], int]:
        entries, revision = await self.kv.range(self.prefix)
        nodes: dict[str, NodeRecord] = {}
        for entry in entries:
            record = self._parse(entry.key, entry.value)
            if record is not None:
                nodes[record.id] = record
        return nodes, revision

    def mirror(
        self, on_change: Callable[[Mapping[str, NodeRecord]], None], verify_s: float = 10.0
    ) -> PrefixMirror[NodeRecord]:
        """A live in-memory copy of every node record, keyed by node id."""
        return PrefixMirror(self.kv, self.prefix, self._parse, on_change, verify_s=verify_s)

    def _parse(self, key: str, raw: bytes) -> NodeRecord | None:
        """The record at ``key``; None (logged) when unreadable, so one bad value never
        hides the other nodes."""
        try:
            record = NodeRecord.from_json(raw)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable node record at %s: %s", key, exc)
            return None
        if self.key(record.id) != key:
            log.warning("ignoring node record at %s: its id is %r", key, record.id)
            return None
        return record


class Registration:
    """A node's live entry: keep the lease alive, publish load, leave cleanly."""

    def __init__(self, registry: Registry, lease: int, ttl: int, record: NodeRecord) -> None:
        self.registry = registry
        self.lease = lease
        self.ttl = ttl
        self.record = record

    @property
    def refresh_interval(self) -> float:
        return self.ttl / 3

    async def publish(self, record: NodeRecord, force: bool = False) -> bool:
        """Write ``record`` if it differs from the last one written; True when written."""
        if not force and record.is_same_report(self.record):
            return False
        stamped = replace(record, reported_at=time.time())
        try:
            await self.registry.kv.put(
                self.registry.key(record.id), stamped.to_json(), lease=self.lease
            )
        except LeaseNotFound:
            await self._reregister(stamped)
        self.record = stamped
        return True

    async def run_once(self) -> str:
        """One keepalive; re-register when the lease was lost (after an etcd outage)."""
        try:
            await self.registry.kv.keepalive(self.lease)
            return "lease refreshed"
        except LeaseNotFound:
            await self._reregister(self.record)
            return f"lease lost, registered again with lease {self.lease}"

    async def _reregister(self, record: NodeRecord) -> None:
        self.lease = await self.registry.kv.grant_lease(self.ttl)
        await self.registry.kv.put(self.registry.key(record.id), record.to_json(), lease=self.lease)
        log.warning("node %s registered again with lease %d", record.id, self.lease)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the lease alive until ``stop``; backend outages are retried, not fatal."""
        while not stop.is_set():
            try:
                await self.run_once()
                delay = self.refresh_interval
            except BackendUnavailable as exc:
                log.warning("lease keepalive failed: %s", exc)
                delay = min(1.0, self.refresh_interval)
            await pause(stop, delay)

    async def close(self) -> None:
        """Leave the registry now instead of waiting for the TTL (shielded by callers)."""
        try:
            await self.registry.kv.revoke_lease(self.lease)
        except ImctlError as exc:
            log.warning("could not revoke lease %d: %s", self.lease, exc)


# -- self-preservation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreservationPolicy:
    threshold: float = 0.5  # fraction of nodes lost at once that trips it
    window_s: float = 10.0  # "at once": losses within this window add up
    grace_s: float = 30.0  # how long the last view is held before the loss is believed


@dataclass(frozen=True, slots=True)
class Preservation:
    """The outcome of one look at the registry: what to serve and why."""

    nodes: Mapping[str, NodeRecord]
    held_since: float | None
    message: str


def preserve(
    reference: Mapping[str, NodeRecord],
    observed: Mapping[str, NodeRecord],
    held_since: float | None,
    now: float,
    policy: PreservationPolicy,
) -> Preservation:
    """Decide whether a view that lost many nodes at once is believed.

    ``reference`` is the largest view served within the policy window. Losing more than
    ``threshold`` of it at once looks like a registry or network fault, not a mass death,
    so the lost nodes are kept (with their last records) for ``grace_s``.
    """
    lost = [nid for nid in reference if nid not in observed]
    if not reference or len(lost) <= len(reference) * policy.threshold:
        msg = "applied" if held_since is None else "recovered: holding released"
        return Preservation(dict(observed), None, msg)
    since = now if held_since is None else held_since
    if now - since >= policy.grace_s:
        return Preservation(
            dict(observed),
            None,
            f"grace over: accepting loss of {len(lost)}/{len(reference)} nodes",
        )
    held: dict[str, Any] = dict(observed)
    for nid in lost:
        held[nid] = reference[nid]
    return Preservation(
        held,
        since,
        f"self-preservation: {len(lost)}/{len(reference)} nodes vanished at once; "
        f"holding the last view for {policy.grace_s - (now - since):.0f}s more",
    )


class PreservingView:
    """Feeds registry views through :func:`preserve`, remembering the window's reference.

    Only node-id sets are kept per served view; the latest record of each node is kept once,
    so memory stays bounded by the node count, not the change rate.
    """

    def __init__(self, policy: PreservationPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.held_since: float | None = None
        self._served: deque[tuple[float, frozenset[str]]] = deque()
        self._records: dict[str, NodeRecord] = {}
        self.last_message = ""

    def reference(self, now: float) -> dict[str, NodeRecord]:
        while len(self._served) > 1 and now - self._served[0][0] > self.policy.window_s:
            self._served.popleft()  # the newest view stays the reference however old
        best: frozenset[str] = frozenset()
        for _, ids in self._served:
            if len(ids) >= len(best):
                best = ids
        return {nid: self._records[nid] for nid in best if nid in self._records}

    def offer(self, observed: Mapping[str, NodeRecord]) -> Preservation:
        now = self.clock()
        self._records.update(observed)
        result = preserve(self.reference(now), observed, self.held_since, now, self.policy)
        if (result.held_since is None) != (self.held_since is None):
            log.warning("%s", result.message)
        if result.message.startswith("grace over"):
            self._served.clear()  # the loss is accepted: it becomes the new reference
        self.held_since = result.held_since
        self.last_message = result.message
        if result.held_since is None:
            self._served.append((now, frozenset(result.nodes)))
            if len(self._records) > 2 * len(result.nodes) + 64:
                live = set().union(*(ids for _, ids in self._served))
                self._records = {k: v for k, v in self._records.items() if k in live}
        return result
