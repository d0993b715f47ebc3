"""The decision pipeline: pure stages over a frozen :class:`Snapshot`.

1. health   - state up, listed, weight > 0 (at build) and below capacity (at pick time);
2. gray     - the first routing release that takes the user fixes the track;
3. proximity- regions tried in preference order, the nearest with headroom wins;
4. balance  - power of two choices on (conns + pending) / (capacity * weight);
5. fallbacks- the next best nodes, other zones first, then other regions.
"""

from __future__ import annotations

import random
from collections.abc import Container, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

from control.common.registry import NodeRecord
from control.gray.model import Release, UserContext, Verdict, explain
from control.scheduler.snapshot import STABLE, Group, Snapshot

Placement = Literal["local", "nearby", "remote"]
Strategy = Literal["stable", "gray", "gray_fallback"]
P2C_SAMPLES = 8  # random draws before a linear scan for a node with room
_EMPTY: Mapping[str, Group] = {}


class PendingView(Protocol):
    def get(self, node_id: str, default: int = 0) -> int: ...


class Decision(NamedTuple):
    node: NodeRecord
    region: str
    placement: Placement
    track: str
    strategy: Strategy
    fallbacks: tuple[NodeRecord, ...]
    release: str = ""  # the release that took the user ("" none), even on gray_fallback


# -- stage 1: health -------------------------------------------------------------------------
def has_room(node: NodeRecord, pending: PendingView) -> bool:
    return (
        node.state == "up" and node.weight > 0 and node.conns + pending.get(node.id) < node.capacity
    )


def load(node: NodeRecord, pending: PendingView) -> float:
    return (node.conns + pending.get(node.id)) / (node.capacity * node.weight)


# -- stage 2: gray ---------------------------------------------------------------------------
def choose_track(snapshot: Snapshot, user: UserContext) -> tuple[str, Release | None]:
    release = snapshot.rules.first(user)
    return (release.name, release) if release is not None else (STABLE, None)


# -- stage 4: balance ------------------------------------------------------------------------
def p2c(
    nodes: Sequence[NodeRecord],
    pending: PendingView,
    rng: random.Random,
    exclude: Container[str] = frozenset(),
) -> NodeRecord | None:
    """The less loaded of two random nodes with room; None when no node has room."""
    n = len(nodes)
    if n == 0:
        return None
    rand = rng.random
    get = pending.get
    best: NodeRecord | None = None
    best_load = 0.0
    seen = 0
    for _ in range(P2C_SAMPLES):
        node = nodes[int(rand() * n)]
        if node.id in exclude or node.state != "up" or node.weight <= 0:
            continue
        used = node.conns + get(node.id, 0)
        if used >= node.capacity:
            continue
        node_load = used / (node.capacity * node.weight)
        if best is None or node_load < best_load:
            best, best_load = node, node_load
        seen += 1
        if seen == 2:
            return best
    if best is not None:
        return best
    # Sampling kept hitting full or excluded nodes: scan, so "no room" is the truth.
    candidates = [m for m in nodes if m.id not in exclude and has_room(m, pending)]
    if not candidates:
        return None
    return min(candidates, key=lambda m: load(m, pending))


# -- stage 3: proximity ----------------------------------------------------------------------
def place(
    groups: Mapping[str, Group],
    ranking: Sequence[str],
    home: str | None,
    pending: PendingView,
    rng: random.Random,
) -> tuple[NodeRecord, str, Placement] | None:
    """The nearest region (in ``ranking`` order) whose nodes have room, and the node there.

    Placement says how far the client travels: its own region, another region of its
    preference row, or anywhere (its region is unknown).
    """
    for region in ranking:
        group = groups.get(region)
        if group is None:
            continue
        node = p2c(group.nodes, pending, rng)
        if node is not None:
            if home is None:
                return node, region, "remote"
            return node, region, "local" if region == home else "nearby"
    return None


# -- stage 5: fallbacks ----------------------------------------------------------------------
def fallbacks(
    groups: Mapping[str, Group],
    ranking: Sequence[str],
    chosen: NodeRecord,
    pending: PendingView,
    rng: random.Random,
    count: int,
) -> tuple[NodeRecord, ...]:
    """Up to ``count`` nodes to try if the chosen one fails, so that one zone or region
    going down does not take the fallbacks with it: first one node from each other zone of
    the chosen region, then one from each next region in preference order, then any node
    with room in preference order."""
    if count <= 0:
        return ()
    picked: list[NodeRecord] = []
    taken = {chosen.id}
    own = groups.get(chosen.region)
    if own is not None:
        for zone, nodes in own.zone_list:
            if zone != chosen.zone:
                node = p2c(nodes, pending, rng, taken)
                if node is not None:
                    picked.append(node)
                    taken.add(node.id)
                    if len(picked) == count:
                        return tuple(picked)
    others = [groups[r] for r in ranking if r != chosen.region and r in groups]
    for group in others:
        node = p2c(group.nodes, pending, rng, taken)
        if node is not None:
            picked.append(node)
            taken.add(node.id)
            if len(picked) == count:
                return tuple(picked)
    for group in ([own] if own is not None else []) + others:
        while len(picked) < count:
            node = p2c(group.nodes, pending, rng, taken)
            if node is None:
                break
            picked.append(node)
            taken.add(node.id)
        if len(picked) == count:
            break
    return tuple(picked)


def decide(
    snapshot: Snapshot,
    user: UserContext,
    ranking: Sequence[str],
    pending: PendingView,
    rng: random.Random,
    fallback_count: int,
) -> Decision | None:
    """The whole pipeline; None when no node can take the client."""
    track, release = choose_track(snapshot, user)
    strategy: Strategy = "gray" if release is not None else "stable"
    groups = snapshot.tracks.get(track, _EMPTY)
    placed = place(groups, ranking, user.region, pending, rng)
    if placed is None and release is not None:
        # The canary has no room anywhere: serve the user from stable rather than refuse.
        track, strategy = STABLE, "gray_fallback"
        groups = snapshot.tracks.get(STABLE, _EMPTY)
        placed = place(groups, ranking, user.region, pending, rng)
    if placed is None:
        return None
    node, region, placement = placed
    extra = fallbacks(groups, ranking, node, pending, rng, fallback_count)
    name = release.name if release is not None else ""
    return Decision(node, region, placement, track, strategy, extra, name)


# -- explaining a decision -------------------------------------------------------------------
class RegionRoom(NamedTuple):
    region: str
    nodes: int  # the track's nodes there
    with_room: int  # of which could take a client now


class Explanation(NamedTuple):
    """What :func:`decide` would do for a user and why, without its random draws."""

    verdicts: list[Verdict]  # every release's, in order
    track: str
    strategy: Strategy | Literal["none"]
    regions: list[RegionRoom]  # the track's regions in preference order
    region: str | None  # where the client would connect; None: 503 no_capacity


def _rooms(
    groups: Mapping[str, Group], ranking: Sequence[str], pending: PendingView
) -> list[RegionRoom]:
    return [
        RegionRoom(r, len(groups[r].nodes), sum(has_room(n, pending) for n in groups[r].nodes))
        for r in ranking
        if r in groups
    ]


def explain_decision(
    snapshot: Snapshot,
    releases: tuple[Release, ...],
    user: UserContext,
    ranking: Sequence[str],
    pending: PendingView,
) -> Explanation:
    """The decision told stage by stage. ``releases`` are all the releases (the snapshot
    keeps only routing ones), so a paused or drafted release shows why it took nobody.
    Placement picks the first region with room, as :func:`place` does (its P2C returns a
    node whenever one has room)."""
    verdicts = explain(releases, user)
    track = next((v.release for v in verdicts if v.chosen), STABLE)
    strategy: Strategy = "stable" if track == STABLE else "gray"
    rooms = _rooms(snapshot.tracks.get(track, _EMPTY), ranking, pending)
    if track != STABLE and not any(r.with_room for r in rooms):
        track, strategy = STABLE, "gray_fallback"
        rooms = _rooms(snapshot.tracks.get(STABLE, _EMPTY), ranking, pending)
    region = next((r.region for r in rooms if r.with_room), None)
    return Explanation(verdicts, track, strategy if region else "none", rooms, region)
