"""Wiring from settings to live backends: the one place that picks embedded or etcd."""

from __future__ import annotations

from control.common.config import ClusterSettings
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.presence.cluster import PresenceCluster, build_cluster
from control.settings import Settings


def make_kv(cluster: ClusterSettings) -> KeyValueStore:
    if cluster.backend == "etcd":
        from control.common.kv.etcd import EtcdKV

        return EtcdKV(cluster.etcd.endpoints, timeout_s=cluster.etcd.timeout_s)
    return EmbeddedKV()


def make_presence(settings: Settings) -> PresenceCluster:
    p = settings.presence
    return build_cluster(
        [(s.id, s.url, s.weight) for s in p.shards],
        p.backend,
        timeout_s=settings.heartbeat.timeout_s,
        key_prefix=p.key_prefix,
        vnodes=p.vnodes,
    )
