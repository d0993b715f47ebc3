"""Rebalance after scale-out, the records and the pure planning.

An operator's request (``<prefix>/rebalance/cluster``, written by the admin API, or by the
leader controller's automatic mode) says how fast the hot nodes may shed connections over
the whole cluster and until which max/mean ratio. The leader controller turns it into one
plan per round from one snapshot of the registry (``<prefix>/rebalance-plan/cluster``):
each hot node's quota and its whole-number slice of the rate, in a time window that no
two rounds share. Each node sheds its own slice (``access/rebalance.py``), so the
cluster's reconnect frames never exceed the request's rate."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from control.common.errors import BadRequest
from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.records import RecordStore, RecordType, dump_json
from control.common.registry import NodeRecord
from control.common.schema import build, setting

NAME = "cluster"  # one request for the whole cluster
RATIO_MIN = 1.0
RATE_MAX = 100_000.0
#: a request is followed this long after it is written, then ignored
LIFETIME_S = 3600.0


@dataclass(frozen=True, slots=True)
class RebalanceRequest:
    """Shed until max/mean <= ``until_ratio`` in each region, at most ``max_rate``
    reconnect frames a second over the whole cluster."""

    max_rate: float
    until_ratio: float
    at: float
    by: str

    def to_json(self) -> bytes:
        return dump_json(self)

    @classmethod
    def from_json(cls, raw: bytes) -> RebalanceRequest:
        """Parse a request; raises ValueError naming what is wrong."""
        try:
            data = json.loads(raw)
        except (RecursionError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"rebalance request is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("rebalance request must be a JSON object")
        problems = check(data.get("max_rate"), data.get("until_ratio"))
        at, by = _number(data.get("at")), data.get("by")
        if at is None or at < 0:
            problems.append("at must be a timestamp >= 0")
        if not isinstance(by, str):
            problems.append("by must be a string")
        if problems or at is None:
            raise ValueError("rebalance request: " + "; ".join(problems))
        return cls(float(data["max_rate"]), float(data["until_ratio"]), float(at), str(by))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def check(max_rate: object, until_ratio: object) -> list[str]:
    """Every problem with a request's two settings (the admin API answers them at once)."""
    problems = []
    rate = _number(max_rate)
    if rate is None or not 0 < rate <= RATE_MAX:
        problems.append(f"max_rate must be a number in (0, {RATE_MAX:g}], got {max_rate!r}")
    ratio = _number(until_ratio)
    if ratio is None or not RATIO_MIN <= ratio <= 100:
        problems.append(f"until_ratio must be a number in [1, 100], got {until_ratio!r}")
    return problems


def _parse(raw: bytes, where: str) -> RebalanceRequest:
    return RebalanceRequest.from_json(raw)


def _name(request: RebalanceRequest) -> str:
    return NAME


REBALANCE_REQUESTS: RecordType[RebalanceRequest] = RecordType(
    "rebalance request", _parse, name_of=_name
)


def rebalance_requests(kv: KeyValueStore, prefix: str) -> RecordStore[RebalanceRequest]:
    return RecordStore(kv, Keys(prefix).rebalance, REBALANCE_REQUESTS)


# -- the plan ---------------------------------------------------------------------------------
#: a node keeps its frames this much further apart than its slice's rate asks, so that
#: frames timed where they arrive, a few milliseconds off when they were sent, still
#: number at most the slice's rate in any 1 s window
SPACING = 1.05


@dataclass(frozen=True, slots=True)
class NodeLoad:
    region: str
    conns: int
    capacity: int
    weight: float = 1.0


def loads_of(records: Iterable[NodeRecord]) -> dict[str, NodeLoad]:
    """The loads a plan is made from: the nodes that take clients (up, weight > 0)."""
    return {
        r.id: NodeLoad(r.region, r.conns, r.capacity, r.weight)
        for r in records
        if r.state == "up" and r.weight > 0
    }


def ratio(loads: Mapping[str, NodeLoad], region: str) -> float:
    """max/mean connections per node of ``region`` (1.0 for an empty region)."""
    conns = [n.conns for n in loads.values() if n.region == region]
    total = sum(conns)
    return max(conns) * len(conns) / total if total else 1.0


def ratios(loads: Mapping[str, NodeLoad]) -> dict[str, float]:
    """max/mean of every region that has nodes."""
    return {region: ratio(loads, region) for region in sorted({n.region for n in loads.values()})}


def shed_plan(loads: Mapping[str, NodeLoad], until_ratio: float) -> dict[str, int]:
    """How many connections each node sheds (its quota): in a region whose max/mean is
    above ``until_ratio``, every node above that line sheds down to the mean (rounded up),
    so that reconnecting clients spread over the nodes below it; elsewhere nobody sheds."""
    plan: dict[str, int] = {}
    for region, now in ratios(loads).items():
        if now <= until_ratio:
            continue
        mine = {nid: n for nid, n in loads.items() if n.region == region}
        mean = sum(n.conns for n in mine.values()) / len(mine)
        for nid, n in sorted(mine.items()):
            if n.conns > until_ratio * mean:
                plan[nid] = n.conns - math.ceil(mean)
    return plan


def rates_for(quotas: Mapping[str, int], max_rate: float) -> dict[str, float]:
    """Each shedder's reconnect frames a second, together at most ``max_rate``.

    Whole numbers, at least 1 each, shared by quota (largest remainder): a node's frames,
    spaced at least 1/rate apart, then number at most its rate in any 1 s window, and so
    the cluster's at most ``max_rate``. More shedders than whole frames a second: the
    biggest quotas go this round, the rest in a later one. Under 1/s in all: the biggest
    quota alone, at ``max_rate``. No node's rate is above its quota (it would end early
    and idle)."""
    wanted = {nid: q for nid, q in quotas.items() if q > 0}
    if not wanted or max_rate <= 0:
        return {}
    order = sorted(wanted, key=lambda nid: (-wanted[nid], nid))
    budget = math.floor(max_rate)
    if budget < 1:
        return {order[0]: float(max_rate)}
    chosen = order[:budget]
    total = sum(wanted[nid] for nid in chosen)
    spare = budget - len(chosen)
    rates = {nid: 1 + spare * wanted[nid] // total for nid in chosen}
    left = budget - sum(rates.values())
    by_remainder = sorted(chosen, key=lambda nid: (-(spare * wanted[nid] % total), nid))
    for nid in by_remainder[:left]:
        rates[nid] += 1
    return {nid: float(min(rate, wanted[nid])) for nid, rate in rates.items()}


@dataclass(frozen=True)
class ShedSlice:
    """One node's part of a round: shed ``quota`` connections at ``rate`` a second."""

    quota: int = setting(doc="connections to shed", ge=1)
    rate: float = setting(doc="reconnect frames a second at most", gt=0, le=RATE_MAX)

    @property
    def takes_s(self) -> float:
        """How long the slice takes at its rate, with the node's spacing."""
        return self.quota * SPACING / self.rate


def plan_round(
    loads: Mapping[str, NodeLoad], until_ratio: float, max_rate: float
) -> dict[str, ShedSlice]:
    """One round from one snapshot of the loads: every hot node's quota and its slice of
    the rate (empty: every region is within the ratio)."""
    quotas = shed_plan(loads, until_ratio)
    return {nid: ShedSlice(quotas[nid], rate) for nid, rate in rates_for(quotas, max_rate).items()}


@dataclass(frozen=True)
class RebalancePlan:
    """A round of a rebalance: the slices, and the wall-clock window they are shed in (a
    node tells nobody before ``start`` or after ``end``; the next round starts after
    this one's ``end``, so no two rounds' rates ever add up)."""

    round: int = setting(doc="1 for a request's first round", ge=1)
    request_at: float = setting(doc="the request this round serves (its ``at``)", ge=0)
    start: float = setting(doc="wall-clock start, seconds since the epoch", ge=0)
    end: float = setting(doc="wall-clock end", ge=0)
    until_ratio: float = setting(doc="the request's ratio", ge=RATIO_MIN, le=100)
    max_rate: float = setting(doc="the request's cluster-wide rate", gt=0, le=RATE_MAX)
    slices: Mapping[str, ShedSlice] = setting(MappingProxyType({}), "node id -> its slice")
    by: str = setting("", "who asked for the rebalance")

    def check(self, path: str) -> list[str]:
        problems = []
        if self.end < self.start:
            problems.append(f"{path}.end: before start")
        if sum(s.rate for s in self.slices.values()) > self.max_rate + 1e-9:
            problems.append(f"{path}.slices: rates add up to more than max_rate")
        return problems

    def to_json(self) -> bytes:
        return dump_json(self)

    @classmethod
    def from_json(cls, raw: bytes, where: str = "rebalance plan") -> RebalancePlan:
        try:
            data: Any = json.loads(raw)
        except (RecursionError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(where, f"not JSON ({exc})") from None
        problems: list[str] = []
        plan = build(cls, data, where, problems)
        if problems:
            raise BadRequest(where, "; ".join(problems))
        return plan


def new_round(
    loads: Mapping[str, NodeLoad],
    request: RebalanceRequest,
    previous: RebalancePlan | None,
    now: float,
    lead_s: float,
) -> RebalancePlan | None:
    """The next round of ``request`` (None: nothing to shed), starting ``lead_s`` from
    ``now`` so that the nodes have it before it starts, and never before ``previous``
    ends."""
    slices = plan_round(loads, request.until_ratio, request.max_rate)
    if not slices:
        return None
    same = previous is not None and previous.request_at == request.at
    start = max(now + lead_s, previous.end if previous is not None else 0.0)
    # One second more than the slowest slice: a node that starts a little late still
    # sheds its quota; the next round waits for the end anyway.
    end = start + max(s.takes_s for s in slices.values()) + 1.0
    return RebalancePlan(
        previous.round + 1 if same and previous is not None else 1,
        request.at,
        start,
        end,
        request.until_ratio,
        request.max_rate,
        MappingProxyType(slices),
        request.by,
    )


def _plan_parse(raw: bytes, where: str) -> RebalancePlan:
    return RebalancePlan.from_json(raw, where)


REBALANCE_PLANS: RecordType[RebalancePlan] = RecordType(
    "rebalance plan", _plan_parse, name_of=lambda plan: NAME
)


def rebalance_plans(kv: KeyValueStore, prefix: str) -> RecordStore[RebalancePlan]:
    return RecordStore(kv, Keys(prefix).rebalance_plan, REBALANCE_PLANS)
