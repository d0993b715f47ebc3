from __future__ import annotations

from control.common.ratelimit import TokenBuckets


def test_bucket_refills_and_bounds_memory() -> None:
    now = [0.0]
    tb = TokenBuckets(rate=2, burst=3, max_keys=2, clock=lambda: now[0])
    assert [tb.allow("a") for _ in range(3)] == [0, 0, 0]
    wait = tb.allow("a")
    assert 0.4 < wait <= 0.5
    now[0] += 0.5
    assert tb.allow("a") == 0
    tb.allow("b")
    tb.allow("c")  # evicts the least recently seen ("a")
    assert len(tb._buckets) == 2 and "a" not in tb._buckets
