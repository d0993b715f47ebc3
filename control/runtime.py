"""Wiring from settings to live backends: the one place that picks embedded or etcd."""

from __future__ import annotations

from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.settings import ClusterSettings


def make_kv(cluster: ClusterSettings) -> KeyValueStore:
    if cluster.backend == "etcd":
        from control.common.kv.etcd import EtcdKV

        return EtcdKV(cluster.etcd.endpoints[0], timeout_s=cluster.etcd.timeout_s)
    return EmbeddedKV()
