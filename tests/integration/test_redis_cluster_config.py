"""The Redis Cluster engine's and the Sentinel shards' pure parts: hostile config and URLs
refused with a sentence naming the field, bucket tags in their slot ranges, CLUSTER NODES
read into members with their health."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from control.common.errors import ConfigError
from control.presence.cluster_engine import members_of
from control.presence.cluster_link import bucket_of, bucket_tags
from control.presence.resize import url_problem
from control.presence.sentinel import SentinelURL, parse_sentinel_url
from control.settings import parse_settings


def test_sentinel_urls() -> None:
    assert parse_sentinel_url("redis+sentinel://a:26379,b:26380/shard1/2") == SentinelURL(
        (("a", 26379), ("b", 26380)), "shard1", 2
    )
    for bad, says in (
        ("redis+sentinel://a/shard", "is not host:port"),
        ("redis+sentinel://a:0/shard", "is not host:port"),
        ("redis+sentinel://a:1", "master-name"),
        ("redis+sentinel://a:1/x/y", "master-name"),
        ("redis://a:1/x", r"expected redis\+sentinel"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_sentinel_url(bad)
    assert url_problem("redis+sentinel://a:1/m") is None
    assert "is not host:port" in str(url_problem("redis+sentinel://a/m"))


def test_cluster_config_names_what_is_wrong() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"presence": {"backend": "redis-cluster"}}, "f.yaml")
    assert "presence.cluster.seeds: at least one host:port" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_settings(
            {"presence": {"backend": "redis-cluster", "cluster": {"seeds": ["h:1", "nope"]}}},
            "f.yaml",
        )
    assert "presence.cluster.seeds[1]: 'nope' is not host:port" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_settings(
            {
                "presence": {
                    "backend": "redis",
                    "shards": [{"id": "s0", "url": "redis+sentinel://x/m"}],
                }
            },
            "f.yaml",
        )
    assert "presence.shards[0].url" in str(err.value)
    ok = parse_settings(
        {"presence": {"backend": "redis-cluster", "cluster": {"seeds": ["h:7000"], "buckets": 64}}},
        "f.yaml",
    )
    assert ok.presence.cluster.buckets == 64


def test_bucket_tags_fall_in_their_slot_ranges() -> None:
    tags = bucket_tags(256)
    assert len(set(tags)) == 256
    for i, tag in enumerate(tags):
        assert key_slot(tag.encode()) * 256 // 16384 == i
    # a user's bucket is the range its own uid hashes to
    assert bucket_of("alice", 256) == key_slot(b"alice") * 256 // 16384
    with pytest.raises(ValueError, match="buckets"):
        bucket_tags(0)


def test_cluster_nodes_read_into_members() -> None:
    nodes = {
        "127.0.0.1:7000": {
            "node_id": "a" * 40,
            "flags": "myself,master",
            "master_id": "-",
            "slots": [["0", "8191"]],
        },
        "127.0.0.1:7001": {
            "node_id": "b" * 40,
            "flags": "master,fail",
            "master_id": "-",
            "slots": [],
        },
        "127.0.0.1:7002": {
            "node_id": "c" * 40,
            "flags": "master",
            "master_id": "-",
            "slots": [["8192", "16383"]],
        },
        "127.0.0.1:7003": {
            "node_id": "d" * 40,
            "flags": "slave,fail?",
            "master_id": "a" * 40,
            "slots": [],
        },
    }
    members = members_of(nodes)
    assert [(m.addr[-4:], m.role, m.health, m.slots) for m in members] == [
        ("7000", "master", "ok", 8192),
        ("7001", "master", "fail", 0),
        ("7002", "master", "ok", 8192),
        ("7003", "replica", "pfail", 0),
    ]
