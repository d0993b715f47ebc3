"""The scheduler's state at the edge of the pure pipeline: the current snapshot, this
scheduler's pending counts, and how registry views become snapshots."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping

from control.common.registry import NodeRecord, PreservationPolicy, PreservingView
from control.gray.model import Release, Target, UserContext
from control.scheduler.pipeline import Decision, decide
from control.scheduler.proximity import RegionMap
from control.scheduler.snapshot import Pending, Snapshot


class Engine:
    def __init__(
        self,
        region_map: RegionMap,
        *,
        static_nodes: Iterable[NodeRecord] = (),
        releases: Iterable[Release] = (),
        policy: PreservationPolicy | None = None,
        fallback_count: int = 2,
        pending_window_s: float = 10.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region_map = region_map
        self.static = {n.id: n for n in static_nodes}
        self.config_releases = tuple(releases)
        self.fallback_count = fallback_count
        self.rng = rng or random.Random()
        self.view = PreservingView(policy or PreservationPolicy(), clock)
        self.pending = Pending(pending_window_s, clock)
        self._observed: Mapping[str, NodeRecord] = {}
        self._stored: Mapping[str, Release] = {}
        self._stable: Target | None = None
        self.builds = 0
        self.message = "static nodes only"
        self.snapshot = Snapshot.build(self.static, self.config_releases)

    def set_nodes(self, observed: Mapping[str, NodeRecord]) -> None:
        self._observed = observed

    def set_releases(self, stored: Mapping[str, Release]) -> None:
        self._stored = stored

    def set_stable(self, target: Target | None) -> None:
        """The stable target from the store (None: no promote yet)."""
        self._stable = target

    def releases(self) -> tuple[Release, ...]:
        """Config releases in their order, then stored ones by name; a stored release
        replaces a config one of the same name (SREs change the store, not the file)."""
        merged = [self._stored.get(r.name, r) for r in self.config_releases]
        names = {r.name for r in self.config_releases}
        merged += [self._stored[n] for n in sorted(self._stored) if n not in names]
        return tuple(merged)

    def rebuild(self) -> str:
        """One step: fold the latest views into a new snapshot. Returns what it did."""
        preserved = self.view.offer(self._observed)
        nodes = dict(self.static)
        nodes.update(preserved.nodes)  # a live record beats a static one of the same id
        self.builds += 1
        self.snapshot = Snapshot.build(
            nodes,
            self.releases(),
            revision=self.builds,
            held=preserved.held_since is not None,
            previous=self.snapshot,
            stable=self._stable,
        )
        self.pending.sync(self.snapshot.nodes)
        self.message = preserved.message
        return f"snapshot {self.builds}: {len(nodes)} nodes, {preserved.message}"

    def hold_remaining(self) -> float | None:
        """Seconds until a self-preservation hold ends (a rebuild then accepts the loss)."""
        since = self.view.held_since
        if since is None:
            return None
        return max(0.0, since + self.view.policy.grace_s - self.view.clock())

    def assign(self, user: UserContext) -> Decision | None:
        ranking = self.region_map.ranking(user.region)
        self.pending.tick()
        decision = decide(self.snapshot, user, ranking, self.pending, self.rng, self.fallback_count)
        if decision is not None:
            self.pending.add(decision.node.id)
        return decision
