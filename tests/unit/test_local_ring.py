"""``imctl up``'s packaged config runs two embedded status shards, so that a ring change
can be watched on the local cluster without Redis."""

from __future__ import annotations

from control.cli.context import default_local_config
from control.presence.resize import add_shard, finish, remove_shard
from control.presence.ring import RingSpec, ShardSpec
from control.settings import load_settings


def test_the_local_cluster_has_two_embedded_shards_to_resize() -> None:
    presence = load_settings(default_local_config(), env={}).presence
    assert presence.backend == "embedded"
    assert [(s.id, s.url) for s in presence.shards] == [
        ("s0", "embedded:s0"),
        ("s1", "embedded:s1"),
    ]
    spec = RingSpec(1, tuple(ShardSpec(s.id, s.url, s.weight) for s in presence.shards))
    grown = add_shard(spec, "embedded:s2")
    assert [s.id for s in grown.shards] == ["s0", "s1", "s2"]
    assert [s.id for s in remove_shard(finish(grown), "s0").shards] == ["s1", "s2"]
