"""Every dashboard, rendered as Grafana JSON, written to dashboards/json/ (and the alert
rules' unit tests to alerts_test.yml) and compared with what is committed there."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import access, alert_cases, gray, overview, presence, scheduler

HERE = Path(__file__).parent
OUT = HERE / "json"

#: file name (without .json) -> builder
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "overview": overview.build,
    "scheduler": scheduler.build,
    "access": access.build,
    "gray": gray.build,
    "presence": presence.build,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def outputs(out: Path = OUT) -> dict[Path, Callable[[], str]]:
    """Every generated file and how to render it."""
    files: dict[Path, Callable[[], str]] = {
        out / f"{name}.json": (lambda name=name: render(name))  # type: ignore[misc]
        for name in DASHBOARDS
    }
    files[alert_cases.TESTS] = alert_cases.render
    return files


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for path, text in outputs(out).items():
        path.write_text(text())
    return list(outputs(out))


def stale(out: Path = OUT) -> list[Path]:
    """The generated files that are missing or differ from a fresh build."""
    return [
        path
        for path, text in outputs(out).items()
        if not path.exists() or path.read_text() != text()
    ]


def queries(board: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of a dashboard's JSON."""
    for panel in board.get("panels") or []:  # type: ignore[attr-defined]
        for target in panel.get("targets") or []:
            yield panel.get("title", ""), target.get("expr", "")
