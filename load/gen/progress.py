"""The progress bar while a run goes (rich): seconds done, clients connected, handshakes
and failures this second. Off when asked, or when stderr is not a terminal."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from load.gen.scenario import Scenario
from load.gen.stats import Window


class Bar:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.on = scenario.progress and sys.stderr.isatty()
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> Bar:
        if self.on:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f}s"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[line]}"),
                console=Console(stderr=True),
                # Redrawn on each second's update: no refresh thread (the workers are
                # forked after this, and a fork copies no thread but its locks).
                auto_refresh=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task(
                self.scenario.kind, total=self.scenario.duration_s, line=""
            )
        return self

    def update(self, second: int, window: Window, result: Any) -> None:
        if not self.on:
            return
        c = window.counts
        line = (
            f"connected {window.online:,}/{self.scenario.clients:,}  "
            f"handshakes {c['handshakes']}/s  failures "
            f"{c['handshake_failures'] + c['ask_failures']}/s  reconnects "
            f"{sum(window.reconnects.values())}/s"
        )
        self.progress.update(self.task, completed=second, line=line, refresh=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.on:
            self.progress.__exit__(kind, exc, tb)
