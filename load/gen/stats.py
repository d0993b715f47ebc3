"""Numbers of a load run, mergeable across workers and seconds: latency histograms with
logarithmic buckets (a percentile within 2.5 % of the true value, whatever the count) and
the per-second ``Window`` a worker sends its parent. Pure."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RATIO = 1.05  # bucket i holds values in [RATIO**i, RATIO**(i+1)) milliseconds
_LOG = math.log(RATIO)
FLOOR_MS = 0.001  # anything below counts as this (a bucket index must be finite)

LATENCIES = ("endpoint", "handshake", "message")  # what each window measures, in ms
COUNTS = (
    "asks",  # scheduler answers with an endpoint
    "ask_failures",  # anything else: refusals, errors, timeouts
    "handshakes",  # WebSockets opened and welcomed
    "handshake_failures",  # a node that could not be reached or refused the upgrade
    "sent",  # msg frames sent
    "acked",  # their acks
    "received",  # msg frames delivered to a simulated client
    "logouts",  # churn: sessions the client ended itself
    "kicked",
)


def bucket(ms: float) -> int:
    return math.floor(math.log(max(ms, FLOOR_MS)) / _LOG)


def bucket_value(index: int) -> float:
    """A bucket's representative: its geometric middle."""
    return float(RATIO ** (index + 0.5))


@dataclass
class Histogram:
    """Counts by logarithmic bucket; ``merge`` adds another's."""

    buckets: Counter[int] = field(default_factory=Counter)

    def add(self, ms: float) -> None:
        self.buckets[bucket(ms)] += 1

    def merge(self, other: Histogram | Mapping[int, int]) -> None:
        self.buckets.update(other.buckets if isinstance(other, Histogram) else other)

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def percentile(self, p: float) -> float | None:
        """The value below which ``p`` percent of the samples fall; None when empty."""
        total = self.count
        if total == 0:
            return None
        rank = max(1, math.ceil(total * p / 100))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return bucket_value(index)
        raise AssertionError("unreachable: the ranks add up to the total")

    def to_data(self) -> dict[int, int]:
        return dict(self.buckets)


def merged(histograms: Iterable[Histogram]) -> Histogram:
    out = Histogram()
    for h in histograms:
        out.merge(h)
    return out


@dataclass
class Window:
    """One worker's second: counters, latency histograms, reconnects by reason, and the
    clients it holds connected at the end of the second (a gauge, not a sum over time)."""

    counts: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # why asks/handshakes failed
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram() for name in LATENCIES}
    )
    online: int = 0
    by_node: Counter[str] = field(default_factory=Counter)  # connected, by node

    def merge(self, other: Window) -> None:
        """Add ``other``'s counts (gauges add too: two workers' clients together)."""
        self.counts.update(other.counts)
        self.reconnects.update(other.reconnects)
        self.failures.update(other.failures)
        for name in LATENCIES:
            self.latency[name].merge(other.latency[name])
        self.online += other.online
        self.by_node.update(other.by_node)

    def to_data(self) -> dict[str, Any]:
        """Plain data for the pipe to the parent."""
        return {
            "counts": dict(self.counts),
            "reconnects": dict(self.reconnects),
            "failures": dict(self.failures),
            "latency": {k: h.to_data() for k, h in self.latency.items()},
            "online": self.online,
            "by_node": dict(self.by_node),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Window:
        w = cls(
            counts=Counter(data["counts"]),
            reconnects=Counter(data["reconnects"]),
            failures=Counter(data["failures"]),
            online=int(data["online"]),
            by_node=Counter(data["by_node"]),
        )
        for name in LATENCIES:
            w.latency[name].merge({int(k): v for k, v in data["latency"][name].items()})
        return w


@dataclass
class Timeline:
    """The run second by second (index 0 = the first second), all workers merged.
    Counters of a worker's window go to the second it was sent in; gauges (``online``,
    ``by_node``) of a second are, once ``seal`` is called for it, the sum of every worker's
    latest report (a worker late by a moment still counts with its last figures)."""

    seconds: list[Window] = field(default_factory=list)
    last: dict[int, Window] = field(default_factory=dict)  # each worker's latest gauges

    def _at(self, second: int) -> Window:
        while len(self.seconds) <= second:
            self.seconds.append(Window())
        return self.seconds[second]

    def add(self, second: int, worker: int, window: Window) -> None:
        gauges = (window.online, window.by_node)
        window.online, window.by_node = 0, Counter()
        self._at(max(second, 0)).merge(window)
        window.online, window.by_node = gauges
        self.last[worker] = window

    def seal(self, second: int) -> Window:
        """Set ``second``'s gauges from the workers' latest reports; that second's window."""
        w = self._at(second)
        w.online = sum(x.online for x in self.last.values())
        w.by_node = Counter()
        for x in self.last.values():
            w.by_node.update(x.by_node)
        return w

    def total(self) -> Window:
        """Counters and histograms over the whole run (gauges: the last second's)."""
        out = Window()
        for w in self.seconds:
            out.counts.update(w.counts)
            out.reconnects.update(w.reconnects)
            out.failures.update(w.failures)
            for name in LATENCIES:
                out.latency[name].merge(w.latency[name])
        if self.seconds:
            out.online = self.seconds[-1].online
            out.by_node = Counter(self.seconds[-1].by_node)
        return out

    def percentiles_over(
        self, name: str, width: int, ps: tuple[float, ...] = (50, 90, 99)
    ) -> list[tuple[int, dict[float, float | None]]]:
        """``name``'s percentiles in consecutive windows of ``width`` seconds: (first
        second of the window, {p: ms}), windows with no sample left out."""
        out = []
        for start in range(0, len(self.seconds), width):
            h = merged(w.latency[name] for w in self.seconds[start : start + width])
            if h.count:
                out.append((start, {p: h.percentile(p) for p in ps}))
        return out
