"""The lock-free loop metrics expose exactly what prometheus_client's own would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from control.common.metrics import LoopCounter, LoopHistogram

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


@given(
    st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=50),
    st.lists(st.sampled_from(["ok", "bad_request", "no_capacity"]), max_size=50),
)
def test_same_exposition_as_prometheus_client(values: list[float], results: list[str]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hist = LoopHistogram("t_seconds", "doc", BOUNDS, ours)
    ref_hist = Histogram("t_seconds", "doc", buckets=BOUNDS, registry=theirs)
    count = LoopCounter("t_total", "doc", ["result"], ours)
    ref_count = Counter("t_total", "doc", ["result"], registry=theirs)
    for v in values:
        hist.observe(v)
        ref_hist.observe(v)
    for r in results:
        count.inc(r)
        ref_count.labels(r).inc()
    assert exposition(ours) == exposition(theirs)
    assert count.value("ok") == results.count("ok")
