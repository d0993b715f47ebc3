"""The dashboards built in code: the committed JSON is what the builder makes now, it
loads back into the SDK's Grafana 11 model, and every panel has a query."""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.__main__ import main
from dashboards.build import DASHBOARDS, OUT, queries, stale, write

register_default_plugins()


def test_committed_files_are_fresh() -> None:
    found = stale()
    assert not found, f"stale: {[str(p) for p in found]}; run python -m dashboards"


def test_a_stale_file_is_found(tmp_path: Path) -> None:
    write(tmp_path)
    assert not stale(tmp_path)
    board = tmp_path / "access.json"
    board.write_text(board.read_text().replace("imctl_access_connections", "imctl_conns"))
    assert stale(tmp_path) == [board]
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0


def test_every_dashboard_loads_back_with_its_variables_and_queries() -> None:
    assert {p.stem for p in OUT.glob("*.json")} == set(DASHBOARDS)
    for name in DASHBOARDS:
        text = (OUT / f"{name}.json").read_text()
        raw = json.loads(text)
        model = Dashboard.from_json(raw)
        # The model is the schema: loading and dumping again loses and adds nothing.
        assert json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n" == text
        assert model.uid == f"imctl-{name}" and model.title
        assert model.templating is not None and model.templating.list_val is not None
        names = [v.name for v in model.templating.list_val]
        assert names == ["datasource", "cluster", "region", "node"], name
        assert model.panels, name
        for panel in model.panels:
            assert panel.targets, f"{name}: panel {panel.title!r} has no query"
            for target in panel.targets:
                assert target.expr.strip(), f"{name}: {panel.title!r} has an empty query"
                assert target.datasource.uid == "${datasource}"
        for title, expr in queries(raw):
            assert "$cluster" in expr, f"{name}: {title!r} ignores the cluster variable"
