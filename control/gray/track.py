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

from control.common.registry import NodeRecord
from control.gray.model import Release, RuleSet, Target, UserContext

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


@dataclass(frozen=True, slots=True)
class TrackLoad:
    """One track's share of the fleet, for ``imctl gray status``."""

    nodes: int = 0
    connections: int = 0  # the nodes' load reports (as of each one's last report)
    online: int | None = 0  # presence entries on those nodes (exact); None: not known


def track_loads(
    release: Release,
    nodes: Iterable[NodeRecord],
    stable: Target | None,
    online_by_node: Mapping[str, int] | None,
) -> dict[str, TrackLoad]:
    """Canary (the nodes the release's target selects), stable (the nodes the stable target
    selects, every other node before a promote) and ``other`` (nodes of other releases, or
    an old stable fleet retiring). Pure."""
    tally: dict[str, list[int]] = {}
    for node in nodes:
        if release.target.selects(node.pool, node.version):
            track = "canary"
        elif stable is None or stable.selects(node.pool, node.version):
            track = "stable"
        else:
            track = "other"
        counts = tally.setdefault(track, [0, 0, 0])
        counts[0] += 1
        counts[1] += node.conns
        counts[2] += (online_by_node or {}).get(node.id, 0)
    known = online_by_node is not None
    loads = {}
    for track in ("canary", "stable", "other"):
        count, conns, online = tally.get(track, [0, 0, 0])
        loads[track] = TrackLoad(count, conns, online if known else None)
    return loads
