"""The step controller: the leader controller walks running releases through their
``steps``, each step judged by the canary analysis before the next.

For each running release with steps, once ``step_interval_s`` has passed since its last
change (the audit trail's newest record), :func:`decide` reads the verdict: ``pass`` takes
the next step (action ``advance``), ``breach`` rolls back (action ``analysis``),
``inconclusive`` (missing figures, too little traffic) pauses (action ``analysis``) for a
human to look at: it never advances or rolls back on missing data. Every decision is a
compare-and-swap on the revision it read, its figures in the audit record; a release
changed meanwhile is left for the next tick. The first step out of 0 % takes no analysis:
there is no canary traffic to judge yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from control.common.errors import ImctlError
from control.common.tasks import pause
from control.gray.analysis import Analysis, Verdict, judge
from control.gray.figures import FiguresMissing, FiguresSource
from control.gray.metrics import GrayMetrics
from control.gray.model import Release
from control.gray.stable import hand_over_due
from control.gray.store import ReleaseConflict, ReleaseMissing, ReleaseStore, StoredRelease
from control.gray.verbs import next_step, transition

log = logging.getLogger(__name__)
STEPPER = "gray-stepper"  # who the audit trail names for the controller's decisions
ADVANCE = "advance"
ANALYSIS = "analysis"


@dataclass(frozen=True)
class Decision:
    """What the stepper does to one release: ``verb`` (a :mod:`control.gray.verbs` verb)
    recorded as ``action``, with the figures and the reason; verb None: nothing."""

    verb: str | None
    action: str
    why: str
    figures: Mapping[str, Any]


NOTHING = Decision(None, "", "", MappingProxyType({}))


def decide(release: Release, verdict: Verdict | None, problems: list[str]) -> Decision:
    """Pure: the verdict on a due release made into a change. ``verdict`` None: the first
    step out of 0 %, nothing to judge. ``problems``: a release whose analysis settings are
    broken pauses (saying what is wrong) rather than step blind."""
    if problems:
        return Decision("pause", ANALYSIS, "analysis settings: " + "; ".join(problems), {})
    if verdict is None:
        return Decision("step", ADVANCE, "first step: no canary traffic to judge yet", {})
    figures = MappingProxyType({"verdict": verdict.kind, **verdict.figures})
    if verdict.kind == "breach":
        return Decision("rollback", ANALYSIS, f"breach: {verdict.why}", figures)
    if verdict.kind == "inconclusive":
        return Decision("pause", ANALYSIS, f"inconclusive: {verdict.why}", figures)
    if next_step(release) is None:
        return NOTHING  # the plan is done: promote is a human's call
    return Decision("step", ADVANCE, f"pass: {verdict.why}", figures)


class Stepper:
    """Walks running step plans; ``run_once`` is one look at every release."""

    def __init__(
        self,
        store: ReleaseStore,
        figures: FiguresSource,
        clock: Callable[[], float] = time.time,
        *,
        leader: Callable[[], bool] = lambda: True,
        by: str = STEPPER,
        metrics: GrayMetrics | None = None,
    ) -> None:
        self.store = store
        self.figures = figures
        self.clock = clock
        self.leader = leader
        self.by = by
        self.metrics = metrics
        # name -> (revision, when) of the last verdict that changed nothing (a plan at its
        # last step that passes): judged again an interval later, not every tick.
        self._quiet: dict[str, tuple[int, float]] = {}

    async def run_once(self) -> list[str]:
        """One sentence per release it looked at and acted on (or why it could not)."""
        if not self.leader():
            return ["not the leader: not stepping"]
        listing = await self.store.list()
        if self.metrics is not None:
            self.metrics.releases(s.release for s in listing)
        done: list[str] = []
        handed = await self._hand_over(listing)
        if handed:
            done.append(handed)
        running = [s for s in listing if s.release.state == "running"]
        running = [s for s in running if s.release.steps]
        if not running:
            return done
        await self.figures.sample()
        for stored in running:
            said = await self._look(stored)
            if said:
                done.append(said)
        return done

    async def _hand_over(self, listing: list[StoredRelease]) -> str:
        """Finish a promote that stopped before handing the stable version over."""
        current = await self.store.stable.get()
        due = hand_over_due(
            ((s.release, s.revision) for s in listing), None if current is None else current.stable
        )
        if due is None:
            return ""
        release, revision = due
        why = "promote finished: the stable version hand-over was missing"
        await self.store.stable.hand_over(release, revision, by=self.by, why=why)
        said = f"{release.name}: stable version handed over to {release.target}"
        log.warning("%s", said)
        return said

    async def _since(self, stored: StoredRelease) -> float:
        """When the release last changed (its newest audit record)."""
        trail = await self.store.history(stored.release.name, limit=1)
        return trail[-1].at if trail else 0.0

    async def _look(self, stored: StoredRelease) -> str:
        release = stored.release
        now = self.clock()
        last = await self._since(stored)
        quiet = self._quiet.get(release.name)
        if quiet is not None and quiet[0] == stored.revision:
            last = max(last, quiet[1])
        if now - last < release.step_interval_s:
            return ""
        analysis, problems = Analysis.parse(release.analysis, f"{release.name}.analysis")
        verdict: Verdict | None = None
        if release.percent > 0 and not problems:
            verdict = await self._judge(release, analysis)
            if self.metrics is not None:
                self.metrics.verdict(release.name, verdict)
        decision = decide(release, verdict, problems)
        if decision.verb is None:
            self._quiet[release.name] = (stored.revision, now)
            return f"{release.name}: at its last step, analysis passed; promote is yours"
        change = transition(release, decision.verb, {})
        figures = {**decision.figures, **change.figures}
        try:
            written = await self.store.change(
                release.name,
                stored.revision,
                change.release,
                action=decision.action,
                by=self.by,
                why=decision.why,
                figures=figures,
            )
        except (ReleaseConflict, ReleaseMissing) as exc:
            return f"{release.name}: changed meanwhile, next tick ({exc})"
        self._quiet.pop(release.name, None)
        said = (
            f"{release.name}: {decision.verb} ({release.percent:g}% -> "
            f"{written.release.percent:g}%, {written.release.state}): {decision.why}"
        )
        log.warning("%s", said)
        return said

    async def _judge(self, release: Release, analysis: Analysis) -> Verdict:
        try:
            canary, stable = await self.figures.read(release.target, analysis.window_s)
        except FiguresMissing as exc:
            return Verdict(
                "inconclusive",
                MappingProxyType({"missing": str(exc), "window_s": analysis.window_s}),
                str(exc),
            )
        return judge(canary, stable, analysis)

    async def run(self, stop: asyncio.Event, tick_s: float) -> None:
        """Every ``tick_s`` until ``stop``; a tick that fails (the store away) is logged and
        the next one tries again."""
        while not stop.is_set():
            try:
                await self.run_once()
            except ImctlError as exc:  # the store away: the next tick retries
                log.warning("gray stepper: tick failed: %s", exc)
            await pause(stop, tick_s)
