"""The gray releases as metrics, for dashboards and alerts: each release's percent and
state (from the store, every stepper tick), and each analysis verdict with the
canary/stable ratios it saw."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge

from control.gray.analysis import Verdict, VerdictKind
from control.gray.model import Release

STATES = ("draft", "running", "paused", "promoted", "rolled_back")
VERDICTS = get_args(VerdictKind)


class GrayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.percent = Gauge(
            "imctl_gray_release_percent", "Share of matching users", ["release"], registry=registry
        )
        self.state = Gauge(
            "imctl_gray_release_state",
            "1 for the state each release is in",
            ["release", "state"],
            registry=registry,
        )
        self.verdicts = Counter(
            "imctl_gray_analysis",
            "Analysis verdicts (pass, breach, inconclusive)",
            ["release", "verdict"],
            registry=registry,
        )
        self.ratio = Gauge(
            "imctl_gray_analysis_ratio",
            "Canary/stable ratio per metric at the release's last analysis",
            ["release", "metric"],
            registry=registry,
        )
        self._shown: set[str] = set()

    def releases(self, releases: Iterable[Release]) -> None:
        """Show these releases (every one in the store); a deleted one leaves."""
        names = set()
        for r in releases:
            names.add(r.name)
            self.percent.labels(r.name).set(r.percent)
            for state in STATES:
                self.state.labels(r.name, state).set(int(r.state == state))
            # Each verdict's series from 0, so that an alert's increase() sees the first one.
            for kind in VERDICTS:
                self.verdicts.labels(r.name, kind)
        for gone in self._shown - names:
            self.percent.remove(gone)
            for state in STATES:
                self.state.remove(gone, state)
        self._shown = names

    def verdict(self, release: str, verdict: Verdict) -> None:
        self.verdicts.labels(release, verdict.kind).inc()
        ratios = verdict.figures.get("ratios")
        if isinstance(ratios, Mapping):
            for metric, value in ratios.items():
                if isinstance(value, (int, float)):
                    self.ratio.labels(release, str(metric)).set(float(value))
