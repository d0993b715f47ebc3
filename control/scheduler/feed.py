"""The scheduler's snapshot feed: follows the node registry and the gray store, and turns
their changes into the engine's serving snapshot.

A burst of registry changes (a rollout, a zone coming back, every node's load report)
becomes one build: a change marks the feed dirty and a build follows ``rebuild_s`` later.
A release or stable-version change is an operator's decision, rare and awaited: it is due
at once, never behind that window (its build folds in any pending node change). A failed
build keeps the previous snapshot serving and is counted. While self-preservation holds
the last view, a quiet registry sends no change to end the hold, so the feed looks again
when grace ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.registry import NodeRecord, Registry
from control.gray.model import Release
from control.gray.stable import Stable, StableStore, stable_target
from control.gray.store import GrayStore
from control.scheduler.engine import Engine
from control.scheduler.state import SchedulerMetrics

log = logging.getLogger(__name__)

# Look again this long after a hold's grace ends, so the rebuild surely sees it ended.
HOLD_MARGIN_S = 0.05


class SnapshotFeed:
    """Registry and gray mirrors in, the engine's snapshot out. ``run_once`` builds when
    a build is due; ``run`` (a supervised task) waits for the mirrors' first listing,
    builds, says it is synced, then builds whenever one is due."""

    def __init__(
        self,
        engine: Engine,
        kv: KeyValueStore,
        prefix: str,
        metrics: SchedulerMetrics,
        *,
        rebuild_s: float,
        verify_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.rebuild_s = rebuild_s
        self.clock = clock
        self.nodes: PrefixMirror[NodeRecord] = Registry(kv, prefix).mirror(
            self._on_nodes, verify_s=verify_s
        )
        self.gray: PrefixMirror[Release] = GrayStore(kv, prefix).mirror(
            self._on_releases, verify_s=verify_s
        )
        self.stable: PrefixMirror[Stable] = StableStore(kv, prefix).mirror(
            self._on_stable, verify_s=verify_s
        )
        self.synced = asyncio.Event()  # every mirror listed and a snapshot built from them
        self.due: float | None = None  # when the next build is due (clock time)
        # The store revision of each release the serving snapshot holds (0: config only).
        self.served: dict[str, int] = {}
        self.on_build: Callable[[], None] = lambda: None  # told after each build
        self._wake = asyncio.Event()

    @property
    def mirrors(
        self,
    ) -> dict[str, PrefixMirror[NodeRecord] | PrefixMirror[Release] | PrefixMirror[Stable]]:
        return {"nodes": self.nodes, "gray": self.gray, "stable": self.stable}

    def _on_nodes(self, nodes: Mapping[str, NodeRecord]) -> None:
        self.engine.set_nodes(nodes)
        self.changed()

    def _on_releases(self, releases: Mapping[str, Release]) -> None:
        self.engine.set_releases(releases)
        self.changed(urgent=True)

    def _on_stable(self, records: Mapping[str, Stable]) -> None:
        self.engine.set_stable(stable_target(records))
        self.changed(urgent=True)

    def changed(self, *, urgent: bool = False) -> None:
        """A mirror changed: build now (``rebuild_s`` 0, or an ``urgent`` change: due at
        once, on the feed's next turn) or once the burst has settled."""
        if self.rebuild_s <= 0:
            self.build()
        else:  # a build already due sooner stays: the burst's first change sets the time
            self._due_at(self.clock() + (0.0 if urgent else self.rebuild_s))

    def _due_at(self, when: float) -> None:
        self.due = when if self.due is None else min(self.due, when)
        self._wake.set()

    def run_once(self) -> str | None:
        """Build if a build is due; what was built (None: nothing was due, or it failed)."""
        if self.due is None or self.clock() < self.due:
            return None
        return self.build()

    def build(self) -> str | None:
        """Fold the mirrors' latest views into a new snapshot and swap it in."""
        self.due = None
        try:
            message = self.engine.rebuild()
        except Exception:
            # Keep answering from the last good snapshot; the next change tries again.
            log.exception("snapshot rebuild failed; serving the previous snapshot")
            self.metrics.rebuild_failures.inc()
            return None
        self.metrics.observe_snapshot(self.engine.snapshot.nodes, self.engine.snapshot.held)
        revisions = self.gray.revisions
        self.served = {r.name: revisions.get(r.name, 0) for r in self.engine.releases()}
        self.on_build()
        log.debug("%s", message)
        remaining = self.engine.hold_remaining()
        if remaining is not None:
            self._due_at(self.clock() + remaining + HOLD_MARGIN_S)
        return message

    async def run(self, stop: asyncio.Event) -> None:
        await self.nodes.synced.wait()
        await self.gray.synced.wait()
        await self.stable.synced.wait()
        self.build()
        self.synced.set()
        self.metrics.ready.set(1)
        while not stop.is_set():
            self._wake.clear()
            self.run_once()
            timeout = None if self.due is None else max(0.0, self.due - self.clock())
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


FEED = web.AppKey("feed", SnapshotFeed)
