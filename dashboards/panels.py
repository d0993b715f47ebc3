"""The pieces every dashboard shares: the datasource and template variables, label
selectors, and panel constructors (one Prometheus query or more per panel)."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Label matchers a panel's query puts inside its selector: every series carries a
#: ``cluster`` target label (dashboards/prometheus.yml); node-level series a ``node``.
CLUSTER = 'cluster=~"$cluster"'
NODE = 'cluster=~"$cluster", node=~"$node"'

#: A rate's window: Grafana's own, at least four scrape intervals.
RATE = "$__rate_interval"

Query = tuple[str, str]  # (PromQL, legend)


def variables(dash: db.Dashboard) -> db.Dashboard:
    """The datasource, then cluster, region and node (each narrowed by the one before)."""
    dash.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    chained = (
        ("cluster", "Cluster", "label_values(imctl_access_node_info, cluster)"),
        (
            "region",
            "Region",
            f"label_values(imctl_access_node_info{{{CLUSTER}}}, region)",
        ),
        (
            "node",
            "Node",
            f'label_values(imctl_access_node_info{{{CLUSTER}, region=~"$region"}}, node)',
        ),
    )
    for name, label, query in chained:
        dash.with_variable(
            db.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
    return dash


def dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    dash = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["imctl"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
    )
    return variables(dash)


def _targets(panel: timeseries.Panel | stat.Panel, queries: Sequence[Query]) -> None:
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(
            prometheus.Dataquery()
            .expr(expr)
            .legend_format(legend)
            .ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE)
        )


def graph(
    title: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    stack: bool = False,
) -> timeseries.Panel:
    """A time series panel."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10 if not stack else 40)
        .line_width(1)
    )
    if stack:
        panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    _targets(panel, queries)
    return panel


def single(
    title: str, query: Query, *, unit: str = "short", description: str = "", width: int = 6
) -> stat.Panel:
    """A stat panel: one figure, now."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
    )
    _targets(panel, [query])
    return panel
