"""Rebalance after scale-out: an operator's request in the store (``<prefix>/rebalance/
cluster``), a pure plan (which node sheds how many, from the registry's loads), and each
node shedding its own share by the drain's reconnect frames, round after round, until
max/mean connections per node in every region is within the request's ratio."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from control.common.registry import NodeRecord


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
