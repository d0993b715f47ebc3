"""What the admin API reads from the configuration, built by control/launch.py."""

from __future__ import annotations

from dataclasses import dataclass

from control.common.auth import TokenTable


@dataclass(frozen=True)
class AdminConfig:
    cluster: str  # the cluster's name, shown by imctl nodes
    prefix: str  # the cluster's key prefix (drain requests live under it)
    known_regions: frozenset[str]  # region= must name one of these (explain)
    max_event_tails: int  # open GET /v1/presence/events at once
    grants: TokenTable  # admin.tokens, built once when the app is created
