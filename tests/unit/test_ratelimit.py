from __future__ import annotations

from control.common.ratelimit import TokenBuckets, client_key


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


def test_an_ipv6_client_is_its_64_network() -> None:
    """One IPv6 subscriber holds a whole /64 and can ask from a new address every time:
    keyed per address, it would never run out of tokens (and would evict everyone
    else's buckets)."""
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff:eeee:dddd:cccc")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") != client_key("192.0.2.8")
    assert client_key(None) == client_key("") == "unknown"
    assert client_key("fe80::1%eth0") == client_key("fe80::2")  # a zone id is no new client
    assert client_key("not an address") == "not an address"


def test_a_rotating_ipv6_client_runs_out() -> None:
    now = [0.0]
    tb = TokenBuckets(rate=1, burst=3, max_keys=100, clock=lambda: now[0])
    waits = [tb.allow(client_key(f"2001:db8:0:1::{i:x}")) for i in range(10)]
    assert waits[:3] == [0, 0, 0] and all(w > 0 for w in waits[3:])
