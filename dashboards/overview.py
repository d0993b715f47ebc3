"""Overview: who is online (global, by region, platform, node) and room to take more."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import CLUSTER, NODE, dashboard, graph, single

# The controllers count presence (every controller, leader or not, reports the same
# figure): max, not sum, over them.
ONLINE = f"max(imctl_presence_online{{{CLUSTER}}})"


def online_by(dimension: str, value: str = ".*") -> str:
    return (
        f"max by (value) (imctl_presence_online_by{{{CLUSTER}, "
        f'dimension="{dimension}", value=~"{value}"}})'
    )


INFO = f'imctl_access_node_info{{{CLUSTER}, region=~"$region"}}'
# A node's free room: capacity less connections, none while it drains; joined to its
# region through the node's info series.
HEADROOM = (
    f"sum by (region) ((imctl_access_capacity{{{NODE}}} - imctl_access_connections{{{NODE}}})"
    f" * (1 - imctl_access_draining{{{NODE}}})"
    f" * on (cluster, node) group_left (region) {INFO})"
)
CAPACITY_BY_REGION = (
    f"sum by (region) (imctl_access_capacity{{{NODE}}}"
    f" * on (cluster, node) group_left (region) {INFO})"
)


def build() -> Dashboard:
    dash = dashboard(
        "imctl-overview",
        "imctl / Overview",
        "Online users and the room the access nodes have left.",
    )
    for panel in (
        single("Online users", (ONLINE, "online"), description="Online (user, device) entries"),
        single(
            "Connections",
            (f"sum(imctl_access_connections{{{NODE}}})", "connections"),
            description="Open WebSockets on the selected nodes",
        ),
        single(
            "Capacity",
            (f"sum(imctl_access_capacity{{{NODE}}})", "capacity"),
            description="Sum of the selected nodes' hard caps",
        ),
        single(
            "Access nodes up",
            (f'sum(up{{{CLUSTER}, job="imctl-access"}})', "up"),
            description="Access nodes Prometheus reaches",
        ),
        graph("Online users", [(ONLINE, "online")], width=24),
        graph("Online by region", [(online_by("region", "$region"), "{{value}}")], width=8),
        graph("Online by platform", [(online_by("platform"), "{{value}}")], width=8),
        graph("Online by node", [(online_by("node", "$node"), "{{value}}")], width=8),
        graph(
            "Connections against capacity per node",
            [
                (f"sum by (node) (imctl_access_connections{{{NODE}}})", "{{node}}"),
                (f"sum by (node) (imctl_access_capacity{{{NODE}}})", "{{node}} capacity"),
            ],
        ),
        graph(
            "Node utilisation",
            [
                (
                    f"sum by (node) (imctl_access_connections{{{NODE}}})"
                    f" / sum by (node) (imctl_access_capacity{{{NODE}}})",
                    "{{node}}",
                )
            ],
            unit="percentunit",
        ),
        graph(
            "Headroom per region",
            [(HEADROOM, "{{region}}")],
            description="Connections the region's serving nodes can still take "
            "(capacity less connections; a draining node has none)",
        ),
        graph(
            "Headroom share per region",
            [(f"{HEADROOM} / {CAPACITY_BY_REGION}", "{{region}}")],
            unit="percentunit",
        ),
    ):
        dash.with_panel(panel)
    return dash
