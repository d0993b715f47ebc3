"""Is a connected session still on the right track? Pure: no IO, no clock.

An access node serves one track: the release whose target selects it (by pool or version)
while that release fences its nodes (running, paused, rolled back), else the stable track.
A session on a release's node belongs there only while the release still takes its user;
a session on a stable node never moves for a release (raising a percent only adds users,
and moves nobody already placed). When a promote hands the stable track to its target,
the nodes that target does not select are the old stable fleet: they are retired (drained),
never cut (control/gray/stable.py decides which).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from control.gray.model import Release, RuleSet, UserContext

#: why a session is told to reconnect (the access node's moved-connections metric)
MoveReason = Literal["drain", "rollback", "promote", "rebalance"]
MOVE_REASONS: tuple[MoveReason, ...] = ("drain", "rollback", "promote", "rebalance")


@dataclass(frozen=True, slots=True)
class NodeTrack:
    """What a release's target looks at on a node."""

    pool: str
    version: str


def merged(config: Iterable[Release], stored: Mapping[str, Release]) -> tuple[Release, ...]:
    """The releases in the scheduler's order: config ones in their order, then stored ones
    by name; a stored release replaces a config one of the same name."""
    config = tuple(config)
    names = {r.name for r in config}
    return (
        *(stored.get(r.name, r) for r in config),
        *(stored[n] for n in sorted(stored) if n not in names),
    )


def serving(releases: Iterable[Release], node: NodeTrack) -> Release | None:
    """The first fencing release whose target selects ``node``; None: the node is on the
    stable track."""
    for release in releases:
        if release.fences and release.target.selects(node.pool, node.version):
            return release
    return None


def misplaced(rules: RuleSet, on: Release | None, user: UserContext | None) -> bool:
    """True when a session of ``user`` on a node serving ``on`` must ask the scheduler
    again: the release rolled back, or it (or one before it) no longer gives the user
    this track. A stable node's sessions never move; a session whose context is unknown
    (``user`` None: a client that named no app version) moves only on a rollback."""
    if on is None:
        return False
    if not on.routes:
        return True
    if user is None:
        return False
    chosen = rules.first(user)
    return chosen is None or chosen.name != on.name
