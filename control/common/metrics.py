"""Metrics for hot paths: plain numbers, exposed through a collector at scrape time.

prometheus_client's Counter and Histogram take a lock on every update (~1-2 µs each,
several per request on the scheduler's answer path). A process here runs one event loop
and is scraped from that same loop, so an update never races a scrape and needs no lock.
Only use these from the event loop's thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class LoopCounter:
    """A counter with labels; ``inc(*labels)``."""

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name.removesuffix("_total")
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, *labels: str) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + 1

    def zero(self, *labels: str) -> None:
        """Show this label set at 0 before its first event, so that rate() and increase()
        (dashboards, alerts) see that first event too."""
        self.values.setdefault(labels, 0)

    def value(self, *labels: str) -> float:
        return self.values.get(labels, 0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        yield family


class LoopHistogram:
    """A histogram without labels; ``observe(value)``."""

    def __init__(
        self, name: str, doc: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.doc = doc
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, the last is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets are "less than or equal".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += count
            cumulative.append((floatToGoString(bound), total))
        yield HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)
