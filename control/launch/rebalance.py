"""The rebalancer in the controller process: the leader controller plans every round of a
rebalance from one snapshot of the registry (so the cluster-wide rate is one number cut
into whole slices, ``common/rebalance.py``), and, when ``access.rebalance.auto`` is on,
starts one itself when a region stays unbalanced. Wired here because it reads the
releases (control/gray) and the controller lives in control/presence, which must not."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from control.access.config import AutoRebalanceSettings
from control.common.errors import ImctlError
from control.common.kv import KeyValueStore
from control.common.rebalance import (
    LIFETIME_S,
    NAME,
    RebalancePlan,
    RebalanceRequest,
    loads_of,
    new_round,
    ratios,
    rebalance_plans,
    rebalance_requests,
)
from control.common.registry import NodeRecord, Registry
from control.common.tasks import Supervisor, pause
from control.gray.store import ReleaseStore
from control.settings import Settings

log = logging.getLogger(__name__)

AUTO_BY = "controller (auto)"  # who the request names when the automatic mode starts it
MAX_ROUNDS = 20  # a rebalance that has not converged by then gives up
#: a round starts this long after it is written: every node has it by then (a watch
#: delivers in milliseconds), so the nodes start together
LEAD_S = 0.25


@dataclass(frozen=True)
class Timing:
    """The rebalancer's timings, derived from the access section by :func:`timing`."""

    #: after a round ends, until the loads it made are reported (told clients reconnect
    #: within grace + 1 s of jitter, then two load reports)
    settle_s: float
    #: a release change moves clients for this long (the drain window the nodes use)
    moving_s: float
    #: how often the rebalancer looks
    tick_s: float


def timing(settings: Settings) -> Timing:
    a = settings.access
    return Timing(
        settle_s=a.reconnect_grace_s + 1.0 + 2 * a.report_interval_s,
        moving_s=a.drain_s + a.reconnect_grace_s + 1.0,
        tick_s=min(a.report_interval_s, a.rebalance.auto.check_s),
    )


@dataclass(frozen=True)
class Look:
    """One look at the cluster, what the automatic mode decides from."""

    now: float
    ratios: Mapping[str, float]  # max/mean per region
    busy: str  # why no rebalance may start now ("": none may be refused)


def auto_decide(
    cfg: AutoRebalanceSettings, hot_since: Mapping[str, float], look: Look
) -> tuple[dict[str, float], bool]:
    """Pure: since when each region has been above the trigger, and whether to start.

    Hysteresis both ways: a region must stay above ``trigger_ratio`` for ``hot_for_s``
    (a passing imbalance starts nothing), and the rebalance runs down to ``until_ratio``,
    below the trigger. While anything else moves clients (a drain, a release) nothing
    starts and the clocks start again after it."""
    if not cfg.enabled or look.busy:
        return {}, False
    hot = {
        region: hot_since.get(region, look.now)
        for region, now in look.ratios.items()
        if now > cfg.trigger_ratio
    }
    return hot, any(look.now - since >= cfg.hot_for_s for since in hot.values())


class Rebalancer:
    """``run_once`` is one look: start (auto), plan the next round, or finish."""

    def __init__(
        self,
        kv: KeyValueStore,
        prefix: str,
        auto: AutoRebalanceSettings,
        timings: Timing,
        clock: Callable[[], float] = time.time,
        *,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = Registry(kv, prefix)
        self.requests = rebalance_requests(kv, prefix)
        self.plans = rebalance_plans(kv, prefix)
        self.releases = ReleaseStore(kv, prefix)
        self.auto, self.timings, self.clock, self.leader = auto, timings, clock, leader
        self.hot_since: dict[str, float] = {}
        self.rest_until = 0.0
        self.release_revisions: dict[str, int] | None = None
        self.releases_changed_at = 0.0

    async def run_once(self) -> str:
        """What this look did, in words (logged when it changes something)."""
        if not self.leader():
            self.hot_since = {}
            return "not the leader"
        now = self.clock()
        records, _ = await self.registry.list()
        loads = loads_of(records.values())
        busy = await self._disturbance(records, now)
        stored = await self.requests.get(NAME)
        request = stored.record if stored is not None else None
        stored_plan = await self.plans.get(NAME)
        plan = stored_plan.record if stored_plan is not None else None
        why_not = busy or (
            "a rebalance is running"
            if request is not None
            else "resting after the last one"
            if now < self.rest_until
            else ""
        )
        self.hot_since, start = auto_decide(
            self.auto, self.hot_since, Look(now, ratios(loads), why_not)
        )
        if start:
            request = RebalanceRequest(self.auto.max_rate, self.auto.until_ratio, now, AUTO_BY)
            await self.requests.put(request)
            log.warning("rebalance started automatically: max/mean %s", ratios(loads))
        if request is None:
            if plan is not None:
                await self.plans.delete(NAME)  # withdrawn: its round ends with its window
            return "idle"
        if plan is not None and now < plan.end + self.timings.settle_s:
            return f"round {plan.round} under way"
        rounds = plan.round if plan is not None and plan.request_at == request.at else 0
        if now > request.at + LIFETIME_S or rounds >= MAX_ROUNDS:
            return await self._finish(request, now, "gave up short of its ratio")
        if busy:
            return f"waiting: {busy}"
        following = new_round(loads, request, plan, now, LEAD_S)
        if following is None:
            return await self._finish(request, now, "done")
        await self.plans.put(following)
        return self._planned(following)

    def _planned(self, plan: RebalancePlan) -> str:
        slices = ", ".join(f"{n}: {s.quota} at {s.rate:g}/s" for n, s in plan.slices.items())
        log.warning("rebalance round %d: %s", plan.round, slices)
        return f"round {plan.round} planned"

    async def _finish(self, request: RebalanceRequest, now: float, how: str) -> str:
        await self.plans.delete(NAME)
        await self.requests.delete(NAME)
        self.rest_until = now + self.auto.rest_s
        log.warning("rebalance requested by %s: %s", request.by, how)
        return how

    async def _disturbance(self, records: Mapping[str, NodeRecord], now: float) -> str:
        """Why clients are moving for another reason now ("" for none): a node draining,
        or a release changed within the window its moves take."""
        draining = sorted(nid for nid, r in records.items() if r.state == "draining")
        if draining:
            return f"node {draining[0]} is draining"
        revisions = {s.release.name: s.revision for s in await self.releases.list()}
        if revisions != self.release_revisions:
            # The first look counts as a change: what moved before this leader is unknown.
            if self.release_revisions is not None or revisions:
                self.releases_changed_at = now
            self.release_revisions = revisions
        if now < self.releases_changed_at + self.timings.moving_s:
            return "a release changed: its clients may be moving"
        return ""

    async def run(self, stop: asyncio.Event) -> None:
        last = ""
        while not stop.is_set():
            try:
                did = await self.run_once()
            except ImctlError as exc:  # the store away: the next look retries
                did = f"look failed: {exc}"
                log.warning("rebalancer: %s", did)
            if did.startswith("waiting") and did != last:
                log.warning("rebalance %s", did)
            last = did
            await pause(stop, self.timings.tick_s)


def attach_rebalancer(
    app: web.Application,
    settings: Settings,
    kv: KeyValueStore,
    supervisor: Supervisor,
    leader: Callable[[], bool],
) -> Rebalancer:
    """Start the rebalancer on ``supervisor`` once ``app`` (the controller's) has started."""
    rebalancer = Rebalancer(
        kv, settings.cluster.prefix, settings.access.rebalance.auto, timing(settings), leader=leader
    )

    async def run(app: web.Application) -> AsyncIterator[None]:
        supervisor.spawn("rebalancer", rebalancer.run)
        yield  # the supervisor's close stops it with the controller's own tasks

    app.cleanup_ctx.append(run)
    return rebalancer
