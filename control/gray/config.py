"""The gray-release section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from control.common.schema import setting
from control.gray.model import Release


@dataclass(frozen=True)
class GraySettings:
    releases: tuple[Release, ...] = setting((), "releases from config (the store adds more)")

    def check(self, path: str) -> list[str]:
        names = [r.name for r in self.releases]
        return [
            f"{path}.releases: duplicate release name {n!r}"
            for n in sorted({n for n in names if names.count(n) > 1})
        ]
