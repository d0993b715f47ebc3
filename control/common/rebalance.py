"""An operator's rebalance request in the key-value store (``<prefix>/rebalance/cluster``):
how fast the hot nodes may shed connections and until which max/mean ratio. Written by the
admin API, followed by the access nodes (``access/rebalance.py`` plans the shedding)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from control.common.keys import Keys
from control.common.kv import KeyValueStore
from control.common.records import RecordStore, RecordType, dump_json

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
