"""The frozen view a decision works on, pre-grouped so a decision touches few nodes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from control.common.registry import NodeRecord
from control.gray.model import Release, RuleSet, Target

STABLE = "stable"


@dataclass(frozen=True, slots=True)
class Group:
    """The nodes of one track in one region that may take clients (up, weight > 0)."""

    nodes: tuple[NodeRecord, ...]
    zones: Mapping[str, tuple[NodeRecord, ...]]
    zone_list: tuple[tuple[str, tuple[NodeRecord, ...]], ...] = ()  # zones in name order


def _group(nodes: Iterable[NodeRecord]) -> dict[str, Group]:
    by_region: dict[str, list[NodeRecord]] = {}
    for node in nodes:
        by_region.setdefault(node.region, []).append(node)
    groups = {}
    for region, members in by_region.items():
        members.sort(key=lambda n: n.id)
        zones: dict[str, list[NodeRecord]] = {}
        for node in members:
            zones.setdefault(node.zone, []).append(node)
        frozen = {z: tuple(ns) for z, ns in sorted(zones.items())}
        groups[region] = Group(tuple(members), MappingProxyType(frozen), tuple(frozen.items()))
    return groups


@dataclass(frozen=True)
class Snapshot:
    """Nodes and releases as of one registry revision. Built once, read by every decision."""

    nodes: Mapping[str, NodeRecord]
    releases: tuple[Release, ...]
    revision: int = 0
    held: bool = False
    tracks: Mapping[str, Mapping[str, Group]] = field(default_factory=dict)
    # '"node":…,"endpoint":…' per node, escaped once per snapshot instead of per answer
    fragments: Mapping[str, str] = field(default_factory=dict)
    rules: RuleSet = field(default_factory=lambda: RuleSet(()))
    stable: Target | None = None  # the stable target a promote set (None: none yet)

    @classmethod
    def build(
        cls,
        nodes: Mapping[str, NodeRecord],
        releases: Iterable[Release] = (),
        revision: int = 0,
        held: bool = False,
        previous: Snapshot | None = None,
        stable: Target | None = None,
    ) -> Snapshot:
        """``previous`` lends its escaped node fragments (endpoints rarely change, and a
        registry of 1,000 nodes reporting load rebuilds many times a second). ``stable``:
        the stable target a promote set (None: every node no release fences)."""
        releases = tuple(releases)
        routing = tuple(r for r in releases if r.routes)
        usable = [n for n in nodes.values() if n.state == "up" and n.weight > 0]
        # Targets pick nodes by pool or by version: index once, not nodes x releases.
        by_pool: dict[str, list[NodeRecord]] = {}
        by_version: dict[str, list[NodeRecord]] = {}
        for n in usable:
            by_pool.setdefault(n.pool, []).append(n)
            by_version.setdefault(n.version, []).append(n)

        def selected(target: Target) -> list[NodeRecord]:
            found = by_pool.get(target.pool) if target.pool else by_version.get(target.version)
            return found or []

        fenced = {n.id for r in releases if r.fences for n in selected(r.target)}
        unfenced = [n for n in usable if n.id not in fenced]
        if stable is not None:
            # The old stable fleet retires; should the stable target have no usable node
            # at all (its nodes all down), serving from the old fleet beats refusing.
            chosen = [n for n in unfenced if stable.selects(n.pool, n.version)]
            unfenced = chosen or unfenced
        tracks: dict[str, Mapping[str, Group]] = {STABLE: MappingProxyType(_group(unfenced))}
        for release in routing:
            tracks[release.name] = MappingProxyType(_group(selected(release.target)))
        old = previous.fragments if previous is not None else {}
        old_nodes = previous.nodes if previous is not None else {}
        fragments = {}
        for n in nodes.values():
            before = old_nodes.get(n.id)
            if before is not None and before.endpoint == n.endpoint and n.id in old:
                fragments[n.id] = old[n.id]
            else:
                fragments[n.id] = f'"node":{json.dumps(n.id)},"endpoint":{json.dumps(n.endpoint)}'
        return cls(
            nodes=MappingProxyType(dict(nodes)),
            releases=routing,
            revision=revision,
            held=held,
            tracks=MappingProxyType(tracks),
            fragments=MappingProxyType(fragments),
            rules=RuleSet(routing),
            stable=stable,
        )


class Pending:
    """This scheduler's own assignments per node since the node's last load report.

    A count is dropped when the node reports again (its ``reported_at`` moves) or after
    ``window_s`` without a report (static nodes never report), so it never double-counts
    clients the node already includes in ``conns``.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._counts: dict[str, list[float]] = {}  # node id -> [count, first assignment at]
        self._seen: dict[str, float] = {}  # node id -> reported_at of the record in use
        self._horizon = clock() - window_s

    def tick(self) -> None:
        """Read the clock once per decision rather than once per node looked at."""
        self._horizon = self.clock() - self.window_s

    def get(self, node_id: str, default: int = 0) -> int:
        entry = self._counts.get(node_id)
        if entry is None:
            return default
        if entry[1] < self._horizon:
            del self._counts[node_id]
            return default
        return int(entry[0])

    def add(self, node_id: str) -> None:
        entry = self._counts.get(node_id)
        if entry is None or entry[1] < self._horizon:
            self._counts[node_id] = [1, self._horizon + self.window_s]
        else:
            entry[0] += 1

    def sync(self, nodes: Mapping[str, NodeRecord]) -> None:
        """Forget counts of nodes that reported since (or vanished)."""
        for node_id in list(self._counts):
            node = nodes.get(node_id)
            if node is None or node.reported_at != self._seen.get(node_id, node.reported_at):
                del self._counts[node_id]
        self._seen = {nid: n.reported_at for nid, n in nodes.items()}
