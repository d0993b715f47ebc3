"""The access node's Prometheus metrics, in a registry of its own (one per node, so
several nodes in one process never share a series)."""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from control.common.metrics import LoopCounter
from control.gray.track import MoveReason


class AccessMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"node": node_id}
        self.connections = Gauge(
            "imctl_access_connections", "Open client connections", ["node"], registry=self.registry
        ).labels(**labels)
        # Per handshake, frame and close: lock-free loop metrics (control/common/metrics.py).
        self.handshakes = LoopCounter(
            "imctl_access_handshakes_total",
            "WebSocket handshakes by result",
            ["node", "result"],
            self.registry,
        )
        self.frames = LoopCounter(
            "imctl_access_frames_total", "Client frames by type", ["node", "type"], self.registry
        )
        self.frame_errors = LoopCounter(
            "imctl_access_frame_errors_total",
            "Rejected client frames by code",
            ["node", "code"],
            self.registry,
        )
        self.closes = LoopCounter(
            "imctl_access_closes_total",
            "Connections closed by reason",
            ["node", "reason"],
            self.registry,
        )
        self.moved = LoopCounter(
            "imctl_access_moved_total",
            "Connections told to reconnect elsewhere, by reason (drain, rollback, promote, "
            "rebalance)",
            ["node", "reason"],
            self.registry,
        )
        self.flush = Histogram(
            "imctl_access_heartbeat_flush_seconds",
            "Time to flush one heartbeat batch",
            ["node"],
            registry=self.registry,
        ).labels(**labels)
        self.push_write = Histogram(
            "imctl_access_push_write_seconds",
            "Time to write one internal push's frame to all its recipients' sockets",
            ["node"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        ).labels(**labels)
        # Capacity and the node's place, for capacity and headroom panels: the node's other
        # series join its region, zone, pool and version through the info series.
        self.capacity = Gauge(
            "imctl_access_capacity", "Hard connection cap", ["node"], registry=self.registry
        ).labels(**labels)
        self.info = Gauge(
            "imctl_access_node_info",
            "1, labelled with where the node stands (region, zone, pool, version)",
            ["node", "region", "zone", "pool", "version"],
            registry=self.registry,
        )
        self.heartbeat_lag = Gauge(
            "imctl_access_heartbeat_lag_seconds",
            "Age of the heartbeats waiting for a flush to presence (0: none waiting); grows "
            "while presence refuses them",
            ["node"],
            registry=self.registry,
        ).labels(**labels)
        self.draining = Gauge(
            "imctl_access_draining", "1 while the node drains", ["node"], registry=self.registry
        ).labels(**labels)
        self.pushes = Counter(
            "imctl_access_push_frames_total",
            "Frames delivered through the internal push API",
            ["node"],
            registry=self.registry,
        ).labels(**labels)
        self.node_id = node_id
        # From 0, so that panels and alerts see the first of each (a counter is born at 1
        # otherwise, and rate() misses it).
        for reason in get_args(MoveReason):
            self.moved.zero(node_id, reason)
        self.closes.zero(node_id, "kicked")
        self.handshakes.zero(node_id, "ok")

    def describe(self, region: str, zone: str, pool: str, version: str, capacity: int) -> None:
        self.info.labels(self.node_id, region, zone, pool, version).set(1)
        self.capacity.set(capacity)

    def frame(self, kind: str) -> None:
        self.frames.inc(self.node_id, kind)

    def handshake(self, result: str) -> None:
        self.handshakes.inc(self.node_id, result)

    def closed(self, reason: str) -> None:
        self.closes.inc(self.node_id, reason)
