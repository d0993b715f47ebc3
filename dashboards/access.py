"""Access nodes: connections, handshakes, kicks, closes, frame errors, pushes, heartbeat
flushes, drains."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import NODE, RATE, dashboard, graph, single


def by(metric: str, label: str, extra: str = "") -> str:
    return f"sum by ({label}) (rate({metric}{{{NODE}{extra}}}[{RATE}]))"


def quantile(metric: str, q: float) -> str:
    return f"histogram_quantile({q}, sum by (le, node) (rate({metric}_bucket{{{NODE}}}[{RATE}])))"


def build() -> Dashboard:
    dash = dashboard(
        "imctl-access",
        "imctl / Access nodes",
        "The WebSocket front: who connects, who is refused, kicked, closed, and how fast "
        "heartbeats and pushes go out.",
    )
    for panel in (
        single("Connections", (f"sum(imctl_access_connections{{{NODE}}})", "connections")),
        single(
            "Handshakes/s",
            (f"sum(rate(imctl_access_handshakes_total{{{NODE}}}[{RATE}]))", "handshakes"),
            unit="reqps",
        ),
        single(
            "Draining nodes",
            (f"sum(imctl_access_draining{{{NODE}}})", "draining"),
        ),
        single(
            "Heartbeat flush lag (worst)",
            (f"max(imctl_access_heartbeat_lag_seconds{{{NODE}}})", "lag"),
            unit="s",
        ),
        graph(
            "Connections per node",
            [(f"sum by (node) (imctl_access_connections{{{NODE}}})", "{{node}}")],
        ),
        graph(
            "Handshakes by result",
            [(by("imctl_access_handshakes_total", "result"), "{{result}}")],
            unit="reqps",
            description="ok, or why the upgrade was refused (bad_ticket, rate_limited, "
            "draining, full, ...)",
        ),
        graph(
            "Kicks per node",
            [(by("imctl_access_closes_total", "node", ', reason="kicked"'), "{{node}}")],
            unit="ops",
            description="Connections closed because the same device logged in elsewhere",
        ),
        graph(
            "Closes by reason",
            [(by("imctl_access_closes_total", "reason"), "{{reason}}")],
            unit="ops",
        ),
        graph(
            "Frame errors by code",
            [(by("imctl_access_frame_errors_total", "code"), "{{code}}")],
            unit="ops",
        ),
        graph(
            "Client frames by type",
            [(by("imctl_access_frames_total", "type"), "{{type}}")],
            unit="ops",
        ),
        graph(
            "Push write latency",
            [
                (quantile("imctl_access_push_write_seconds", q), f"{{{{node}}}} p{round(q * 100)}")
                for q in (0.5, 0.99)
            ],
            unit="s",
        ),
        graph(
            "Push frames/s",
            [(by("imctl_access_push_frames_total", "node"), "{{node}}")],
            unit="ops",
        ),
        graph(
            "Heartbeat flush lag",
            [(f"max by (node) (imctl_access_heartbeat_lag_seconds{{{NODE}}})", "{{node}}")],
            unit="s",
            description="Age of the heartbeats waiting for presence: about presence.flush_s "
            "when healthy, growing while presence refuses them",
        ),
        graph(
            "Heartbeat flush time",
            [(quantile("imctl_access_heartbeat_flush_seconds", 0.99), "{{node}} p99")],
            unit="s",
        ),
        graph(
            "Draining",
            [(f"max by (node) (imctl_access_draining{{{NODE}}})", "{{node}}")],
        ),
        graph(
            "Connections moved by reason",
            [(by("imctl_access_moved_total", "reason"), "{{reason}}")],
            unit="ops",
            description="Clients told to reconnect elsewhere: drain, rollback, promote, rebalance",
        ),
    ):
        dash.with_panel(panel)
    return dash
