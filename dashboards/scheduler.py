"""The scheduler: decisions by strategy and result, latency, refusals, its snapshot."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import CLUSTER, RATE, dashboard, graph, single

DECISIONS = "imctl_scheduler_decisions_total"


def quantile(q: float) -> str:
    return (
        f"histogram_quantile({q}, sum by (le) "
        f"(rate(imctl_scheduler_decision_seconds_bucket{{{CLUSTER}}}[{RATE}])))"
    )


def result_rate(result: str) -> str:
    return f'sum(rate({DECISIONS}{{{CLUSTER}, result="{result}"}}[{RATE}]))'


def build() -> Dashboard:
    dash = dashboard(
        "imctl-scheduler",
        "imctl / Scheduler",
        "GET /v1/endpoint: what the schedulers decide, how fast, what they refuse.",
    )
    for panel in (
        single(
            "Decisions/s",
            (f"sum(rate({DECISIONS}{{{CLUSTER}}}[{RATE}]))", "decisions"),
            unit="reqps",
        ),
        single("p99 latency", (quantile(0.99), "p99"), unit="s"),
        single(
            "Schedulers ready",
            (f"sum(imctl_scheduler_ready{{{CLUSTER}}})", "ready"),
            description="Schedulers whose registry view is synced",
        ),
        single(
            "Snapshot age (oldest)",
            (f"max(time() - imctl_scheduler_snapshot_timestamp_seconds{{{CLUSTER}}})", "age"),
            unit="s",
            description="Since the oldest serving snapshot was built (load reports rebuild it)",
        ),
        graph(
            "Decisions by strategy and result",
            [
                (
                    f"sum by (strategy, result) (rate({DECISIONS}{{{CLUSTER}}}[{RATE}]))",
                    "{{strategy}} {{result}}",
                )
            ],
            unit="reqps",
        ),
        graph(
            "Placement of answered clients",
            [
                (
                    f'sum by (placement) (rate({DECISIONS}{{{CLUSTER}, result="ok"}}[{RATE}]))',
                    "{{placement}}",
                )
            ],
            unit="reqps",
            description="local: the client's own region; other values: where it went instead",
        ),
        graph(
            "Decision latency",
            [(quantile(q), f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99)],
            unit="s",
        ),
        graph(
            "Refusals: 429 and 503",
            [
                (result_rate("rate_limited"), "429 rate_limited"),
                (result_rate("no_capacity"), "503 no_capacity"),
                (
                    f"{result_rate('no_capacity')} / sum(rate({DECISIONS}{{{CLUSTER}}}[{RATE}]))",
                    "503 share",
                ),
            ],
            unit="reqps",
        ),
        graph(
            "Assignments by release and track",
            [
                (
                    "sum by (release, track) "
                    f"(rate(imctl_scheduler_assignments_total{{{CLUSTER}}}[{RATE}]))",
                    "{{release}} {{track}}",
                )
            ],
            unit="reqps",
        ),
        graph(
            "Client credentials by result",
            [
                (
                    "sum by (result) "
                    f"(rate(imctl_scheduler_client_auth_total{{{CLUSTER}}}[{RATE}]))",
                    "{{result}}",
                )
            ],
            unit="reqps",
        ),
        graph(
            "Snapshot age per scheduler",
            [
                (
                    f"time() - imctl_scheduler_snapshot_timestamp_seconds{{{CLUSTER}}}",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        graph(
            "Nodes in the snapshot",
            [
                (
                    "max by (state, pool, region) "
                    f'(imctl_scheduler_nodes{{{CLUSTER}, region=~"$region"}})',
                    "{{region}} {{pool}} {{state}}",
                ),
                (f"max(imctl_scheduler_snapshot_held{{{CLUSTER}}})", "self-preservation hold"),
            ],
        ),
    ):
        dash.with_panel(panel)
    return dash
