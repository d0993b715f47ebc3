"""Two races issue 14's system tests found (tests/e2e/test_ring_resize.py), made
deterministic on embedded shards: a read of a moved user that lands between the mover's
copy and delete, and a mover pass that counted as clean while an offline was half done."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from control.common.kv.embedded import EmbeddedKV
from control.presence.cluster import PresenceCluster
from control.presence.model import Presence
from control.presence.mover import Mover
from control.presence.ringstore import RingStore
from control.presence.shards import open_shard_for
from tests.unit.test_ring_cluster import spec

OLD, NEW = spec(1, ["s0", "s1"]), spec(2, ["s0", "s1", "s2"], ["s0", "s1"])


async def migrating_with_a_user_to_move() -> tuple[PresenceCluster, str, str, str]:
    """A cluster migrating from two shards to three, and one user on a shard it is about
    to leave: (cluster, uid, previous owner, new owner)."""
    cluster = PresenceCluster(OLD, {}, 30, open_shard=open_shard_for("embedded", 30, "t:"))
    await cluster.online(Presence("probe", "d", "n1", "c"))  # opens the shards
    await cluster.apply_ring(NEW)
    for i in range(1000):
        uid = f"u{i}"
        old = cluster._routing.before(uid)
        if old is not None:
            await cluster.online(Presence(uid, "d", "n1", "c"))  # written to the new owner
            # ... so put it back where the previous ring had it: a user not moved yet.
            new = cluster.ring.owner(uid)
            moved = await cluster.shards[new].scan("0", 1000)
            await cluster.shards[old].adopt(
                [e for e in moved[1] if e[0].uid == uid], 0, ring_version=2
            )
            await cluster.shards[new].release([Presence(uid, "d", "n1", "c")], ring_version=2)
            return cluster, uid, old, new
    raise AssertionError("no user changes owner")


def move_after_first(
    cluster: PresenceCluster, shard: str, method: str, old: str
) -> Callable[..., Awaitable[Any]]:
    """Make the first ``method`` call on ``shard`` be followed, before it answers, by a
    mover batch on ``old`` (the user moves right after the new owner was read)."""
    store = cluster.shards[shard]
    real = getattr(store, method)
    done: list[int] = []

    async def then_move(*args: Any, **kwargs: Any) -> Any:
        answer = await real(*args, **kwargs)
        if not done:
            done.append(1)
            assert (await cluster.move_step(old, "0", 1000)).moved >= 1
        return answer

    setattr(store, method, then_move)
    return then_move


@pytest.mark.parametrize("method", ["locate", "who", "touch"])
async def test_a_user_moved_between_the_two_reads_is_still_found(method: str) -> None:
    cluster, uid, old, new = await migrating_with_a_user_to_move()
    move_after_first(cluster, new, method, old)
    if method == "locate":
        assert [q.conn for q in (await cluster.locate([uid])).get(uid, [])] == ["c"]
    elif method == "who":
        assert [q.conn for q in await cluster.who(uid)] == ["c"]
    else:  # reported missing, an access node would log the user in again: an event
        assert await cluster.touch([(uid, "d", "c")]) == []
    await cluster.close()


async def test_a_pass_with_an_offline_half_done_is_not_clean() -> None:
    cluster, uid, old, new = await migrating_with_a_user_to_move()
    kv = EmbeddedKV()
    await kv.connect()
    store = RingStore(kv, "/t")
    await store.seed(OLD)
    stored = await store.ring()
    assert stored is not None and (await store.change(NEW, stored.revision))[0]
    # The logout reached the new owner (a tombstone there), not yet the previous one.
    await cluster.shards[new].offline(uid, "d", "c", "closed", time.time(), ring_version=2,
                                      tombstone=True)  # fmt: skip
    mover = Mover(cluster, store, "m", time.time)
    said = [await mover.run_once() for _ in range(10)]
    assert not any("is stable" in s for s in said), said
    # The logout's second half: the pass after it is clean, and nothing is left behind.
    assert await cluster.shards[old].offline(uid, "d", "c", "closed", time.time(), ring_version=2)
    for _ in range(10):
        if "is stable" in await mover.run_once():
            break
    else:
        raise AssertionError("never stable")
    for sid, shard in cluster.shards.items():
        _, entries = await shard.scan("0", 10_000)
        assert all(cluster.ring.owner(p.uid) == sid for p, _ in entries)
    await cluster.close()
    await kv.close()


async def test_a_call_in_flight_when_its_shard_leaves_the_ring_is_retried() -> None:
    shrinking = spec(2, ["s0", "s1"], ["s0", "s1", "s2"])
    three = spec(1, ["s0", "s1", "s2"])
    cluster = PresenceCluster(three, {}, 30, open_shard=open_shard_for("embedded", 30, "t:"))
    await cluster.apply_ring(shrinking)
    uid = next(f"u{i}" for i in range(1000) if cluster._routing.before(f"u{i}") == "s2")
    await cluster.online(Presence(uid, "d", "n1", "c"))
    new = cluster.ring.owner(uid)
    real = cluster.shards[new].offline

    async def then_finish(*args: Any, **kwargs: Any) -> Any:
        answer = await real(*args, **kwargs)
        # The ring goes stable (s2 leaves) between the new owner's call and the old one's.
        await cluster.apply_ring(spec(2, ["s0", "s1"]))
        return answer

    cluster.shards[new].offline = then_finish  # type: ignore[method-assign]
    assert await cluster.offline(uid, "d", "c") is True  # not a KeyError('s2')
    assert uid not in await cluster.locate([uid])
    await cluster.close()
