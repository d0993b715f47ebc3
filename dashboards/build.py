"""Every dashboard, rendered as Grafana JSON, written to dashboards/json/ and compared
with what is committed there."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import access, gray, overview, presence, scheduler

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


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = out / f"{name}.json"
        path.write_text(render(name))
        written.append(path)
    return written


def stale(out: Path = OUT) -> list[str]:
    """The dashboards whose file in ``out`` is missing or differs from a fresh build."""
    found = []
    for name in DASHBOARDS:
        path = out / f"{name}.json"
        if not path.exists() or path.read_text() != render(name):
            found.append(name)
    return found


def queries(board: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of a dashboard's JSON."""
    for panel in board.get("panels") or []:  # type: ignore[attr-defined]
        for target in panel.get("targets") or []:
            yield panel.get("title", ""), target.get("expr", "")
