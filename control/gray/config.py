"""The gray-release section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from control.common.schema import setting
from control.gray.model import Release


@dataclass(frozen=True)
class GraySettings:
    releases: tuple[Release, ...] = setting((), "releases from config (the store adds more)")
    prometheus_url: str = setting(
        "",
        "canary analysis reads a Prometheus server's HTTP API here (empty: the nodes' own "
        "/metrics)",
        pattern=r"(https?://\S+)?",
    )
    step_tick_s: float = setting(
        5.0, "how often the leader controller looks at running step plans", gt=0, le=600
    )

    def check(self, path: str) -> list[str]:
        names = [r.name for r in self.releases]
        return [
            f"{path}.releases: duplicate release name {n!r}"
            for n in sorted({n for n in names if names.count(n) > 1})
        ]
