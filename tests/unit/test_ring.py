"""The ring, pure: it must place every uid where uhashring's own lookup does (it reads the
continuum directly for speed), and its cache must never change an answer."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from uhashring import HashRing

from control.presence.ring import Ring, RingSpec, ShardSpec

UIDS = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
WEIGHTS = st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6)


def spec(weights: list[int], vnodes: int = 160) -> RingSpec:
    shards = tuple(ShardSpec(f"s{i}", f"redis://h/{i}", w) for i, w in enumerate(weights))
    return RingSpec(version=1, shards=shards, vnodes=vnodes)


@settings(max_examples=60, deadline=None)
@given(WEIGHTS, st.lists(UIDS, min_size=1, max_size=50))
def test_owner_is_uhashrings_answer(weights: list[int], uids: list[str]) -> None:
    s = spec(weights)
    ring = Ring(s)
    reference = HashRing(nodes={x.id: {"weight": x.weight, "vnodes": s.vnodes} for x in s.shards})
    for uid in uids:
        assert ring.owner(uid) == reference.get_node(uid)


@given(WEIGHTS, st.lists(UIDS, max_size=60))
def test_group_partitions_the_uids_by_owner(weights: list[int], uids: list[str]) -> None:
    ring = Ring(spec(weights))
    groups = ring.group(uids)
    assert sorted(u for g in groups.values() for u in g) == sorted(uids)
    for shard, members in groups.items():
        assert all(ring.owner(u) == shard for u in members)


def test_a_full_cache_is_dropped_without_changing_answers() -> None:
    ring = Ring(spec([1, 1, 1]))
    ring.CACHE_MAX = 100
    first = {f"u{i}": ring.owner(f"u{i}") for i in range(1000)}
    assert len(ring._cache) <= 100
    assert {u: ring.owner(u) for u in first} == first


def test_weights_share_the_users() -> None:
    ring = Ring(spec([1, 1, 2]))
    counts = Counter(ring.owner(f"user-{i}") for i in range(40_000))
    share = counts["s2"] / 40_000
    assert 0.45 <= share <= 0.55, counts  # half the weight, about half the users
