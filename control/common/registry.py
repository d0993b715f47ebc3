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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from control.common.errors import BackendUnavailable, ImctlError, LeaseNotFound
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.records import RecordStore, RecordType, dump_json
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
    proxy: str = ""  # host:port of its PROXY v2 listener for the load balancer, "" if none

    def to_json(self) -> bytes:
        return dump_json(self)

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
        for name in ("zone", "pool", "version", "internal", "proxy"):
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
    return Keys(prefix).drains


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
        return dump_json(self)

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


def _node_id(record: NodeRecord) -> str:
    return record.id


def _parse_node(raw: bytes, where: str) -> NodeRecord:
    return NodeRecord.from_json(raw)


def _parse_drain(raw: bytes, where: str) -> DrainRequest:
    return DrainRequest.from_json(raw)


# A node record is stored under its own id; a drain request under the node's id.
NODE_RECORDS: RecordType[NodeRecord] = RecordType("node record", _parse_node, name_of=_node_id)
DRAIN_REQUESTS: RecordType[DrainRequest] = RecordType("drain request", _parse_drain)


def drain_requests(kv: KeyValueStore, prefix: str) -> RecordStore[DrainRequest]:
    """Drain requests by node id: the admin API writes them, each node mirrors its own
    (``drain_requests(kv, prefix).mirror(on_change, only=node_id)``)."""
    return RecordStore(kv, Keys(prefix).drains, DRAIN_REQUESTS)


async def request_drain(
    kv: KeyValueStore, prefix: str, node_id: str, over_s: float, by: str
) -> DrainRequest:
    """Write a drain request for ``node_id`` (the admin API's half)."""
    request = DrainRequest(over_s, time.time(), by)
    await drain_requests(kv, prefix).put(request, name=node_id)
    return request


class Registry:
    """Node records over any :class:`KeyValueStore`."""

    def __init__(self, kv: KeyValueStore, prefix: str = "/imctl") -> None:
        self.kv = kv
        self.records = RecordStore(kv, Keys(prefix).nodes, NODE_RECORDS)
        self.prefix = self.records.prefix

    def key(self, node_id: str) -> str:
        return self.records.key(node_id)

    async def register(self, record: NodeRecord, ttl: int) -> Registration:
        """Grant a lease and publish ``record`` on it."""
        lease = await self.kv.grant_lease(ttl)
        stamped = replace(record, reported_at=time.time())
        await self.records.put(stamped, lease=lease)
        return Registration(self, lease, ttl, stamped)

    async def list(self) -> tuple[dict[str, NodeRecord], int]:
        """Every readable node record by id (an unreadable one is logged and skipped, so
        one bad value never hides the other nodes)."""
        return await self.records.list()

    def mirror(
        self, on_change: Callable[[Mapping[str, NodeRecord]], None], verify_s: float = 10.0
    ) -> PrefixMirror[NodeRecord]:
        """A live in-memory copy of every node record, keyed by node id."""
        return self.records.mirror(on_change, verify_s=verify_s)


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
            await self.registry.records.put(stamped, lease=self.lease)
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
        await self.registry.records.put(record, lease=self.lease)
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
#
# One mechanism for the scheduler (what to route to) and the controller (whose users to
# evict). A vanished node's loss is *pending* for ``window_s``; losses pending together are
# "at once". More than ``threshold`` of the known nodes pending at once trips a hold: the
# lost nodes are kept, nothing is final, for ``grace_s``. A loss becomes *final* (its users
# may be evicted) once it has stood ``window_s`` outside a hold; when a hold's grace ends its
# losses are *believed* (they never trip another hold) and are final as soon as they are
# ``window_s`` old — at once when ``grace_s >= window_s``. So, for a node that stays gone:
# never final before ``window_s`` after it vanished, always final by ``window_s + grace_s``.


@dataclass(frozen=True, slots=True)
class PreservationPolicy:
    threshold: float = 0.5  # fraction of nodes lost at once that trips it
    window_s: float = 10.0  # "at once": losses within this window add up; a loss is final
    # only after standing this long
    grace_s: float = 30.0  # how long the last view is held before the loss is believed


@dataclass(frozen=True, slots=True)
class Loss:
    """A node seen missing and not yet final."""

    at: float  # when it was first seen missing
    believed: bool = False  # a hold over it ended: it never trips another one


@dataclass(frozen=True, slots=True)
class Preservation:
    """The outcome of one look at the registry: what to serve, what is final, and why."""

    nodes: Mapping[str, NodeRecord]  # the view to serve (observed, plus held nodes)
    held_since: float | None
    final: frozenset[str]  # losses that became final now: their users may be evicted
    losses: Mapping[str, Loss]  # losses still pending (or held)
    message: str


def preserve(
    reference: Mapping[str, NodeRecord],
    observed: Mapping[str, NodeRecord],
    losses: Mapping[str, Loss],
    held_since: float | None,
    now: float,
    policy: PreservationPolicy,
) -> Preservation:
    """Judge a registry view against the nodes known before it. Pure.

    ``reference`` holds the last record of every node known and not finally lost;
    ``losses`` when each missing one was first seen missing (a node missing now and absent
    from ``losses`` vanished ``now``). Losing more than ``threshold`` of the known nodes
    within ``window_s`` looks like a registry or network fault, not a mass death, so the
    lost nodes are kept (with their last records) for ``grace_s`` and nothing is final.
    """
    lost = {nid: losses.get(nid) or Loss(now) for nid in reference if nid not in observed}
    # Times compare as ``now >= at + window`` (not ``now - at``): judged at its own
    # deadline, a loss must turn final, whatever the float rounding.
    # Outside a hold, a loss older than the window is final and no longer counts; inside
    # one, every loss it holds keeps counting (a partial recovery may release the hold).
    counted = {
        nid
        for nid, loss in lost.items()
        if not loss.believed and (held_since is not None or now < loss.at + policy.window_s)
    }
    mass = len(counted) > policy.threshold * (len(observed) + len(counted))
    since = (now if held_since is None else held_since) if mass else None
    if since is not None and now >= since + policy.grace_s:
        message = f"grace over: believing the loss of {len(counted)} nodes"
        lost = {nid: replace(loss, believed=True) for nid, loss in lost.items()}
        since = None
    elif since is not None:
        message = (
            f"self-preservation: {len(counted)}/{len(observed) + len(counted)} nodes vanished "
            f"at once; holding the last view for {policy.grace_s - (now - since):.0f}s more"
        )
    else:
        message = "applied" if held_since is None else "recovered: holding released"
    held = counted if since is not None else set()
    final = frozenset(
        nid for nid, loss in lost.items() if nid not in held and now >= loss.at + policy.window_s
    )
    nodes: dict[str, NodeRecord] = dict(observed)
    for nid in held:
        nodes[nid] = reference[nid]
    pending = {nid: loss for nid, loss in lost.items() if nid not in final}
    return Preservation(nodes, since, final, pending, message)


class PreservingView:
    """Feeds registry views through :func:`preserve` and keeps its state: the last record of
    every node not finally lost, the pending losses, the hold. ``offer`` a new registry
    view; ``tick`` at :meth:`deadline` (a quiet registry sends no change that would)."""

    def __init__(self, policy: PreservationPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.held_since: float | None = None
        self.losses: dict[str, Loss] = {}
        self._records: dict[str, NodeRecord] = {}
        self._observed: Mapping[str, NodeRecord] = {}
        self.last_message = ""

    @property
    def known(self) -> Mapping[str, NodeRecord]:
        """Every node observed or lost but not finally: none of these is to be evicted."""
        return self._records

    def offer(self, observed: Mapping[str, NodeRecord]) -> Preservation:
        self._observed = observed
        return self.tick()

    def tick(self) -> Preservation:
        """Judge the last offered view again, now."""
        now = self.clock()
        observed = self._observed
        result = preserve(
            {**self._records, **observed}, observed, self.losses, self.held_since, now, self.policy
        )
        if (result.held_since is None) != (self.held_since is None):
            log.warning("%s", result.message)
        if result.final:
            log.warning("node loss final: %s", ", ".join(sorted(result.final)))
        self.held_since = result.held_since
        self.losses = dict(result.losses)
        self._records = {
            nid: observed[nid] if nid in observed else self._records[nid]
            for nid in (*observed, *self.losses)
        }
        self.last_message = result.message
        return result

    def deadline(self) -> float | None:
        """When judging again would change something (a hold ends, a loss turns final);
        None when nothing is pending."""
        held = self.held_since
        times = [held + self.policy.grace_s] if held is not None else []
        # In a hold only believed losses can turn final; the others wait for its end.
        times += [
            loss.at + self.policy.window_s
            for loss in self.losses.values()
            if held is None or loss.believed
        ]
        return min(times, default=None)
