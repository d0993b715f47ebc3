"""Canary analysis: the canary pool's figures against the stable pool's, judged. Pure: no IO.

A release's ``analysis`` mapping configures it (:class:`Analysis`); :func:`judge` compares
each rate of the canary with the stable pool's and says ``pass``, ``breach`` or
``inconclusive``. Missing figures or too little traffic on either side is inconclusive:
never a pass (which would advance the release on nothing), never a breach (which would roll
it back on nothing). That is where Flagger is weak (flagger#1035, #1098).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Literal

from control.common.schema import build, setting

# The rates a canary is judged on, each a count over the traffic it happened in.
METRICS: tuple[str, ...] = (
    "handshake_failure_rate",  # failed handshakes / handshakes
    "abnormal_close_rate",  # abnormal closes / sessions (open now + closed in the window)
    "error_frame_rate",  # rejected client frames / frames
    "core_error_rate",  # frames the message core failed on / frames
)
DEFAULT_MAX_RATIO = 2.0
VerdictKind = Literal["pass", "breach", "inconclusive"]


def _default_ratios() -> Mapping[str, float]:
    return MappingProxyType(dict.fromkeys(METRICS, DEFAULT_MAX_RATIO))


@dataclass(frozen=True)
class Analysis:
    """How a release's steps are judged (the release's ``analysis`` mapping)."""

    max_ratio: Mapping[str, float] = setting(
        _default_ratios(), "per metric: the canary/stable ratio beyond which it rolls back"
    )
    rate_floor: float = setting(
        0.01, "a stable rate below this counts as this (a 0 stable rate has no ratio)", gt=0, le=1
    )
    min_connections: int = setting(20, "fewer sessions on either pool: inconclusive", ge=1)
    min_handshakes: int = setting(20, "fewer handshakes on either pool: inconclusive", ge=1)
    window_s: float = setting(300.0, "the figures cover this many seconds", gt=0, le=86_400)

    def check(self, path: str) -> list[str]:
        problems = []
        for name, ratio in self.max_ratio.items():
            if name not in METRICS:
                problems.append(
                    f"{path}.max_ratio.{name}: unknown metric (one of: {', '.join(METRICS)})"
                )
            elif ratio is not None and not ratio >= 1:
                problems.append(f"{path}.max_ratio.{name}: must be at least 1, got {ratio}")
        return problems

    @classmethod
    def parse(cls, data: Mapping[str, Any], path: str = "analysis") -> tuple[Analysis, list[str]]:
        """The settings in a release's ``analysis`` mapping, and every problem with them
        (metrics left out of ``max_ratio`` keep the default ratio)."""
        problems: list[str] = []
        analysis = build(cls, data, path, problems)
        if problems:
            return cls(), problems
        ratios = {**_default_ratios(), **analysis.max_ratio}
        return cls(**{**_fields(analysis), "max_ratio": MappingProxyType(ratios)}), []


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass(frozen=True)
class PoolFigures:
    """One pool's traffic over the window: counts summed over its nodes, ``connections``
    open at the end of it. ``nodes`` 0 means nothing was read."""

    nodes: int = 0
    connections: int = 0
    handshakes: float = 0.0  # attempted (ok + failed)
    handshake_failures: float = 0.0
    closes: float = 0.0
    abnormal_closes: float = 0.0
    frames: float = 0.0
    error_frames: float = 0.0
    core_errors: float = 0.0

    @property
    def sessions(self) -> float:
        return self.connections + self.closes

    def rates(self) -> dict[str, float]:
        """Each metric's rate; a rate over no traffic is 0 (nothing went wrong among none)."""
        return {
            "handshake_failure_rate": _rate(self.handshake_failures, self.handshakes),
            "abnormal_close_rate": _rate(self.abnormal_closes, self.sessions),
            "error_frame_rate": _rate(self.error_frames, self.frames),
            "core_error_rate": _rate(self.core_errors, self.frames),
        }

    def data(self) -> dict[str, Any]:
        """Counts and rates as plain data (what the audit record keeps)."""
        rates = {k: round(v, 6) for k, v in self.rates().items()}
        return {**_fields(self), **rates}

    def __add__(self, other: PoolFigures) -> PoolFigures:
        return PoolFigures(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _rate(count: float, total: float) -> float:
    return count / total if total > 0 else 0.0


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    figures: Mapping[str, Any]  # what it saw, as plain data
    why: str


def _too_little(name: str, figures: PoolFigures, cfg: Analysis) -> str | None:
    if figures.nodes == 0:
        return f"no figures from the {name} pool"
    if figures.sessions < cfg.min_connections:
        return f"{name} pool: {figures.sessions:g} sessions < min_connections {cfg.min_connections}"
    if figures.handshakes < cfg.min_handshakes:
        return (
            f"{name} pool: {figures.handshakes:g} handshakes < min_handshakes {cfg.min_handshakes}"
        )
    return None


def judge(canary: PoolFigures, stable: PoolFigures, cfg: Analysis) -> Verdict:
    """Compare the canary with the stable pool. ``breach`` when a canary rate exceeds its
    ratio times the stable rate (floored at ``rate_floor``); ``inconclusive`` when either
    side has too little traffic; ``pass`` otherwise."""
    seen: dict[str, Any] = {
        "canary": canary.data(),
        "stable": stable.data(),
        "window_s": cfg.window_s,
    }
    short = [
        r for r in (_too_little("canary", canary, cfg), _too_little("stable", stable, cfg)) if r
    ]
    if short:
        return Verdict("inconclusive", MappingProxyType(seen), "; ".join(short))
    c_rates, s_rates = canary.rates(), stable.rates()
    ratios: dict[str, float] = {}
    breaches: list[str] = []
    for metric in METRICS:
        base = max(s_rates[metric], cfg.rate_floor)
        ratios[metric] = round(c_rates[metric] / base, 4)
        limit = cfg.max_ratio.get(metric, DEFAULT_MAX_RATIO)
        if c_rates[metric] > limit * base:
            breaches.append(
                f"{metric} {c_rates[metric]:.4f} on the canary is {ratios[metric]:g}x the "
                f"stable {s_rates[metric]:.4f} (limit {limit:g}x)"
            )
    seen["ratios"] = ratios
    if breaches:
        return Verdict("breach", MappingProxyType(seen), "; ".join(breaches))
    return Verdict("pass", MappingProxyType(seen), "every rate within its ratio of the stable pool")
