"""An operator's ring changes as pure transitions: properties over generated rings, and every
refusal listing every problem with the status the admin API answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.presence.resize import (
    RingChangeRefused,
    add_shard,
    finish,
    moved_fraction,
    remove_shard,
    reweight_shard,
)
from control.presence.ring import Ring, RingSpec, ShardSpec


@st.composite
def rings(draw: st.DrawFn, redis: bool = False) -> RingSpec:
    ids = draw(st.lists(st.sampled_from([f"s{i}" for i in range(8)]), min_size=1, unique=True))
    weights = draw(st.lists(st.integers(1, 5), min_size=len(ids), max_size=len(ids)))
    url = "redis://127.0.0.1:{}/0" if redis else "embedded:{}"
    shards = tuple(
        ShardSpec(i, url.format(6379 + n if redis else i), w)
        for n, (i, w) in enumerate(zip(ids, weights, strict=True))
    )
    return RingSpec(draw(st.integers(1, 1000)), shards, vnodes=draw(st.sampled_from([8, 40])))


def shard_set(spec: RingSpec) -> set[tuple[str, str, int]]:
    return {(s.id, s.url, s.weight) for s in spec.shards}


def migrated_from(before: RingSpec, after: RingSpec) -> None:
    assert after.version == before.version + 1
    assert after.previous == before.shards and after.state == "migrating"
    assert after.vnodes == before.vnodes and after.problems() == []


@given(rings(), st.integers(1, 100))
def test_add_then_remove_gives_the_shards_back(spec: RingSpec, weight: int) -> None:
    added = add_shard(spec, "embedded:new", weight)
    migrated_from(spec, added)
    assert shard_set(added) == shard_set(spec) | {("new", "embedded:new", weight)}
    stable = finish(added)
    assert (stable.version, stable.state, stable.previous) == (added.version, "stable", ())
    removed = remove_shard(stable, "new")
    migrated_from(stable, removed)
    assert shard_set(removed) == shard_set(spec)
    assert removed.version == spec.version + 2


@given(rings(), st.data())
def test_every_change_raises_the_version_and_keeps_the_old_shards(
    spec: RingSpec, data: st.DataObject
) -> None:
    target = data.draw(st.sampled_from(spec.shards))
    weight = data.draw(st.integers(1, 100).filter(lambda w: w != target.weight))
    reweighted = reweight_shard(spec, target.id, weight)
    migrated_from(spec, reweighted)
    assert {s.id: s.weight for s in reweighted.shards} == {
        s.id: weight if s.id == target.id else s.weight for s in spec.shards
    }
    if len(spec.shards) > 1:
        removed = remove_shard(spec, target.id)
        migrated_from(spec, removed)
        assert target.id not in {s.id for s in removed.shards}


@given(rings())
def test_an_added_shard_without_an_id_gets_a_free_one(spec: RingSpec) -> None:
    added = add_shard(finish(add_shard(spec, "embedded:x")), "embedded:y")
    ids = [s.id for s in added.shards]
    assert len(set(ids)) == len(ids) == len(spec.shards) + 2


@given(rings(redis=True))
def test_redis_urls_are_checked_and_ids_chosen(spec: RingSpec) -> None:
    added = add_shard(spec, "redis://127.0.0.1:7000/0")
    assert added.shards[-1].id not in {s.id for s in spec.shards}
    with pytest.raises(RingChangeRefused) as refused:
        add_shard(spec, "embedded:x")
    assert refused.value.status == 400
    assert refused.value.problems == ["url: a embedded shard on a ring of the other kind"]


@given(rings(), st.integers(-5, 0), st.data())
def test_refused_changes_list_every_problem(
    spec: RingSpec, weight: int, data: st.DataObject
) -> None:
    migrating = add_shard(spec, "embedded:new")
    taken = data.draw(st.sampled_from(spec.shards))
    busy = f"ring version {migrating.version} is still migrating"
    with pytest.raises(RingChangeRefused) as refused:
        add_shard(migrating, taken.url, weight, taken.id)
    problems = refused.value.problems
    assert len(problems) == 4, problems
    assert problems[0].startswith(busy)
    assert problems[1] == f"weight: a whole number from 1 to 100, not {weight}"
    assert problems[2] == f"url: {taken.url} is shard {taken.id!r} already"
    assert problems[3] == f"id: shard {taken.id!r} exists already"
    assert refused.value.status == 400  # a request that can never succeed is not "later"

    with pytest.raises(RingChangeRefused) as refused:
        reweight_shard(migrating, "nowhere", weight)
    assert refused.value.status == 404 and len(refused.value.problems) == 3
    assert refused.value.problems[0].startswith(busy)

    with pytest.raises(RingChangeRefused) as refused:
        remove_shard(migrating, taken.id)
    assert (refused.value.status, len(refused.value.problems)) == (409, 1)
    assert str(refused.value).startswith(busy)


@pytest.mark.parametrize(
    ("change", "status", "problem"),
    [
        (lambda s: remove_shard(s, "s0"), 400, "shard 's0' is the last one"),
        (lambda s: remove_shard(s, "s9"), 404, "no shard 's9' on the ring (shards: s0)"),
        (lambda s: reweight_shard(s, "s0", 1), 400, "has weight 1 already"),
        (lambda s: reweight_shard(s, "s0", 101), 400, "weight: a whole number from 1 to 100"),
        (lambda s: reweight_shard(s, "s0", True), 400, "not True"),
        (lambda s: add_shard(s, "http://x:1"), 400, "is not redis://host:port/db"),
        (lambda s: add_shard(s, "embedded:"), 400, "embedded:<id> with an id"),
        (lambda s: add_shard(s, "embedded:a", 2.5), 400, "not 2.5"),
        (lambda s: add_shard(s, "embedded:a", shard_id="-x"), 400, "id: '-x': 1-63"),
        (lambda s: finish(s), 409, "ring version 3 is stable already"),
    ],
)
def test_single_refusals(change: object, status: int, problem: str) -> None:
    spec = RingSpec(3, (ShardSpec("s0", "embedded:s0"),))
    with pytest.raises(RingChangeRefused) as refused:
        change(spec)  # type: ignore[operator]
    assert refused.value.status == status
    assert len(refused.value.problems) == 1 and problem in refused.value.problems[0]


def test_moved_fraction_is_the_share_of_users_whose_owner_changes() -> None:
    """Exact over the continuum: a sample of users moves in the same share, and a new
    shard of weight w among n of weight 1 takes about w / (n + w)."""
    spec = RingSpec(1, tuple(ShardSpec(f"s{i}", f"embedded:s{i}") for i in range(4)))
    assert moved_fraction(spec) == 0.0
    added = add_shard(spec, "embedded:s4")
    fraction = moved_fraction(added)
    old, new = Ring(spec), Ring(added)
    uids = [f"user-{i}" for i in range(20_000)]
    sampled = sum(old.owner(u) != new.owner(u) for u in uids) / len(uids)
    assert abs(fraction - sampled) < 0.015, (fraction, sampled)
    assert 0.15 < fraction < 0.25  # ideal 0.2
    assert moved_fraction(remove_shard(finish(added), "s4")) == pytest.approx(fraction)
    assert moved_fraction(finish(added)) == 0.0
