"""The status cluster: calls and errors per shard, breakers, the ring, migrations, and the
controller's housekeeping."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import CLUSTER, RATE, dashboard, graph, single


def build() -> Dashboard:
    dash = dashboard(
        "imctl-presence",
        "imctl / Status cluster",
        "The Redis shards behind presence, the ring that spreads users over them, resizes, "
        "and the presence controller.",
    )
    for panel in (
        single("Ring version", (f"max(imctl_presence_ring_version{{{CLUSTER}}})", "version")),
        single(
            "Migrating",
            (f"max(imctl_presence_ring_migrating{{{CLUSTER}}})", "migrating"),
            description="1 while a resize moves users",
        ),
        single(
            "Users left to move",
            (f"max(imctl_presence_ring_remaining{{{CLUSTER}}})", "remaining"),
        ),
        single(
            "Controllers leading",
            (f"sum(imctl_controller_leader{{{CLUSTER}}})", "leaders"),
            description="Exactly 1 when healthy",
        ),
        graph(
            "Calls per shard",
            [
                (
                    f"sum by (shard) (rate(imctl_presence_shard_ops_total{{{CLUSTER}}}[{RATE}]))",
                    "{{shard}}",
                )
            ],
            unit="ops",
        ),
        graph(
            "Errors per shard",
            [
                (
                    "sum by (shard) "
                    f"(rate(imctl_presence_shard_errors_total{{{CLUSTER}}}[{RATE}]))",
                    "{{shard}}",
                )
            ],
            unit="ops",
        ),
        graph(
            "Breaker state per shard",
            [
                (
                    f"max by (shard, state) (imctl_presence_shard_breaker{{{CLUSTER}}})",
                    "{{shard}} {{state}}",
                )
            ],
            description="1 for the state each shard's circuit breaker is in",
        ),
        graph(
            "Heartbeats dropped (breaker open)",
            [
                (
                    "sum by (shard) "
                    f"(rate(imctl_presence_heartbeats_dropped_total{{{CLUSTER}}}[{RATE}]))",
                    "{{shard}}",
                )
            ],
            unit="ops",
        ),
        graph(
            "Online per shard",
            [(f"max by (shard) (imctl_presence_shard_online{{{CLUSTER}}})", "{{shard}}")],
        ),
        graph(
            "Ring version and migration",
            [
                (f"max(imctl_presence_ring_version{{{CLUSTER}}})", "version"),
                (f"max(imctl_presence_ring_migrating{{{CLUSTER}}})", "migrating"),
            ],
        ),
        graph(
            "Migration progress",
            [
                (f"max(imctl_presence_ring_remaining{{{CLUSTER}}})", "users left to move"),
                (
                    f"sum(increase(imctl_presence_ring_moved_total{{{CLUSTER}}}[{RATE}]))",
                    "users moved",
                ),
            ],
        ),
        graph(
            "Migration rate",
            [(f"max(imctl_presence_ring_rate{{{CLUSTER}}})", "users/s")],
        ),
        graph(
            "Controller housekeeping",
            [
                (
                    f"sum(rate(imctl_presence_expired_total{{{CLUSTER}}}[{RATE}]))",
                    "expired by the sweep",
                ),
                (
                    f"sum(rate(imctl_presence_evicted_total{{{CLUSTER}}}[{RATE}]))",
                    "evicted (node died)",
                ),
            ],
            unit="ops",
        ),
        graph(
            "Leader",
            [(f"max by (instance) (imctl_controller_leader{{{CLUSTER}}})", "{{instance}}")],
        ),
    ):
        dash.with_panel(panel)
    return dash
