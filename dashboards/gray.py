"""Gray releases: the split by track, each release's percent and state, the analysis'
verdicts and ratios, connections moved."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import CLUSTER, NODE, RATE, dashboard, graph, single


def build() -> Dashboard:
    dash = dashboard(
        "imctl-gray",
        "imctl / Gray releases",
        "Where new clients go (canary or stable), how far each release is, and what its "
        "analysis says.",
    )
    assignments = f"imctl_scheduler_assignments_total{{{CLUSTER}}}"
    for panel in (
        single(
            "Canary share of new clients",
            (
                f'sum(rate(imctl_scheduler_assignments_total{{{CLUSTER}, track="canary"}}[{RATE}]))'
                f" / sum(rate({assignments}[{RATE}]))",
                "canary",
            ),
            unit="percentunit",
        ),
        single(
            "Releases running",
            (f'sum(imctl_gray_release_state{{{CLUSTER}, state="running"}})', "running"),
        ),
        graph(
            "New clients by track",
            [(f"sum by (track) (rate({assignments}[{RATE}]))", "{{track}}")],
            unit="reqps",
            stack=True,
        ),
        graph(
            "Connections by pool",
            [
                (
                    f"sum by (pool) (imctl_access_connections{{{NODE}}}"
                    " * on (cluster, node) group_left (pool) "
                    f"imctl_access_node_info{{{CLUSTER}}})",
                    "{{pool}}",
                )
            ],
            stack=True,
        ),
        graph(
            "Percent per release",
            [(f"max by (release) (imctl_gray_release_percent{{{CLUSTER}}})", "{{release}}")],
            unit="percent",
        ),
        graph(
            "State per release",
            [
                (
                    f"max by (release, state) (imctl_gray_release_state{{{CLUSTER}}})",
                    "{{release}} {{state}}",
                )
            ],
            description="1 for the state the release is in",
        ),
        graph(
            "Analysis verdicts",
            [
                (
                    "sum by (release, verdict) "
                    f"(increase(imctl_gray_analysis_total{{{CLUSTER}}}[{RATE}]))",
                    "{{release}} {{verdict}}",
                )
            ],
        ),
        graph(
            "Canary/stable ratios at the last analysis",
            [
                (
                    f"max by (release, metric) (imctl_gray_analysis_ratio{{{CLUSTER}}})",
                    "{{release}} {{metric}}",
                )
            ],
        ),
        graph(
            "Connections moved by reason",
            [
                (
                    f"sum by (reason) (rate(imctl_access_moved_total{{{NODE}}}[{RATE}]))",
                    "{{reason}}",
                )
            ],
            unit="ops",
            width=24,
        ),
    ):
        dash.with_panel(panel)
    return dash
