"""Rebalance after scale-out: an operator's request in the store (``<prefix>/rebalance/
cluster``), a pure plan (which node sheds how many, from the registry's loads), and each
node shedding its own share by the drain's reconnect frames, round after round, until
max/mean connections per node in every region is within the request's ratio."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.records import RecordStore, RecordType, dump_json
from control.common.registry import NodeRecord

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


def shed_plan(loads: Mapping[str, NodeLoad], until_ratio: float) -> dict[str, int]:
    """How many connections each node sheds: in a region whose max/mean is above
    ``until_ratio``, every node above that line sheds down to the mean (rounded up), so
    that reconnecting clients spread over the nodes below it; elsewhere nobody sheds."""
    plan: dict[str, int] = {}
    for region in sorted({n.region for n in loads.values()}):
        mine = {nid: n for nid, n in loads.items() if n.region == region}
        if ratio(mine, region) <= until_ratio:
            continue
        mean = sum(n.conns for n in mine.values()) / len(mine)
        for nid, n in sorted(mine.items()):
            if n.conns > until_ratio * mean:
                plan[nid] = n.conns - math.ceil(mean)
    return plan


def rate_share(plan: Mapping[str, int], node_id: str, max_rate: float) -> float:
    """This node's share of the cluster's rate, by its share of the sheds: every node
    computes the same plan, so together they stay within ``max_rate`` and end together."""
    total = sum(plan.values())
    mine = plan.get(node_id, 0)
    return max_rate * mine / total if total and mine else 0.0
