"""The ring mover: the leader controller's one worker that finishes a resize.

Seeing the stored ring ``migrating`` to version v, it fences every shard to v (old clients
are refused from then on), then walks every shard in ``shards`` and ``previous`` with
``cluster.move_step`` (scan a batch, copy each user whose owner changed to its new owner,
delete it from the old one), at most ``throttle_per_s`` users a second, stopped while an
operator has paused it. A full pass over every shard that moves nothing ends the resize:
the ring is compare-and-swapped to ``stable`` with ``previous`` emptied.

Its account lives in :class:`~control.presence.ringstore.MoverProgress` (written at least
every second): a new leader resumes from its cursors. A pass resumed mid-way cannot know
what the part before the failover moved, so it never counts as clean (one more pass, which
only scans).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from control.presence.model import Counts
from control.presence.ring import RingSpec
from control.presence.ringstore import MoverControl, MoverProgress, RingStore

log = logging.getLogger(__name__)

DONE = "done"  # a cursor: this shard is finished for the current pass
PROGRESS_EVERY_S = 1.0  # progress is written at least this often while moving
RATE_WINDOW_S = PROGRESS_EVERY_S  # the rate is measured over windows this long


class Step(Protocol):
    """What one ``move_step`` did (the cluster's ``MoveStep``)."""

    @property
    def cursor(self) -> str: ...
    @property
    def scanned(self) -> int: ...
    @property
    def moved(self) -> int: ...
    @property
    def held(self) -> int: ...


class MovingCluster(Protocol):
    """What the mover needs of the status cluster (``PresenceCluster``)."""

    @property
    def spec(self) -> RingSpec: ...
    async def apply_ring(self, spec: RingSpec) -> bool: ...
    async def fence_all(self) -> None: ...
    async def move_step(self, shard_id: str, cursor: str, limit: int) -> Step: ...
    def moved_fraction(self) -> float: ...
    async def counts(self) -> Counts: ...


def walk_order(spec: RingSpec) -> list[str]:
    """Every shard a user may be on while migrating, in a fixed order (resumable)."""
    return sorted({s.id for s in spec.shards} | {s.id for s in spec.previous})


def next_shard(spec: RingSpec, cursors: dict[str, str]) -> str | None:
    """The shard the current pass works on: the first one not done; None when all are."""
    for sid in walk_order(spec):
        if cursors.get(sid) != DONE:
            return sid
    return None


class Mover:
    def __init__(
        self,
        cluster: MovingCluster,
        store: RingStore,
        identity: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        batch: int = 1000,
    ) -> None:
        self.cluster = cluster
        self.store = store
        self.identity = identity
        self.clock = clock
        self.sleep = sleep
        self.batch = batch
        self.progress: MoverProgress | None = None  # the last account written or resumed
        self.moved_total = 0  # users this mover moved (the metric's source)
        self.moving = False  # the last step moved or scanned: step again without idling
        self._settled = 0  # the stable ring version whose progress record says so
        self._reset()

    def _reset(self) -> None:
        """Forget the migration in hand: the next step starts by reading the store."""
        self._version = 0  # the ring version fenced and being moved to
        self._clean = False  # the current pass has moved nothing (known from its start)
        self._written_at: float | None = None
        self._next_at = 0.0  # the throttle: no batch before this
        self._window: tuple[float, int] = (0.0, 0)  # (since, moved then): the rate window

    def step_down(self) -> None:
        """No longer the leader: whoever leads next resumes from the stored progress."""
        self.moving = False
        self._reset()

    async def run_once(self) -> str:
        """One batch, or nothing; returns a sentence of what it did."""
        self.moving = False
        stored = await self.store.ring()
        if stored is None or stored.record is None:
            return "no readable ring spec: nothing to move"
        spec = stored.record
        if not spec.migrating:
            if self._version:
                self._reset()  # someone else finished it (an operator, a former leader)
            if self._settled != spec.version:
                await self._settle(spec)
            return f"ring version {spec.version} is stable: nothing to move"
        if self.cluster.spec.version < spec.version:
            await self.cluster.apply_ring(spec)
        if self.cluster.spec.version != spec.version:
            return (
                f"waiting: this process routes on ring version {self.cluster.spec.version}, "
                f"the store has {spec.version}"
            )
        if self._version != spec.version:
            await self._begin(spec)
        progress = self.progress
        assert progress is not None
        control = await self.store.control()
        if control.paused:
            if progress.state != "paused":
                await self._write(dataclasses.replace(progress, state="paused", rate_per_s=0.0))
            return f"paused at {progress.moved} of about {progress.expected} users moved"
        if progress.state != "moving":
            self._window = (self.clock(), progress.moved)  # a pause is no slow rate
            await self._write(dataclasses.replace(progress, state="moving"))
        self.moving = True
        return await self._step(spec, stored.revision, control)

    async def _settle(self, spec: RingSpec) -> None:
        """A leader that died between marking the ring stable and saying so in the
        progress record: say so now (``ring status`` reads the record)."""
        found = await self.store.read_progress()
        if found is not None and found.version == spec.version and found.state != "stable":
            await self._write(
                dataclasses.replace(found, state="stable", cursors={}, rate_per_s=0.0)
            )
        self._settled = spec.version

    async def _begin(self, spec: RingSpec) -> None:
        """Fence every shard to ``spec``, then resume the stored account or start one."""
        await self.cluster.fence_all()
        now = self.clock()
        found = await self.store.read_progress()
        if found is not None and found.version == spec.version and found.state != "stable":
            self.progress = dataclasses.replace(found, by=self.identity)
            self._clean = not found.cursors  # resumed mid-pass: what it moved is unknown
            log.warning(
                "ring mover: resuming the move to version %d at %d users moved (pass %d)",
                spec.version,
                found.moved,
                found.passes + 1,
            )
        else:
            total = (await self.cluster.counts()).total
            expected = round(total * self.cluster.moved_fraction())
            self.progress = MoverProgress(
                spec.version, expected=expected, updated_at=now, by=self.identity
            )
            self._clean = True
            log.warning(
                "ring mover: moving to ring version %d: about %d of %d users",
                spec.version,
                expected,
                total,
            )
        self._version = spec.version
        self._window = (now, self.progress.moved)
        self._next_at = now
        await self._write(self.progress)

    async def _step(self, spec: RingSpec, revision: int, control: MoverControl) -> str:
        progress = self.progress
        assert progress is not None
        cursors = dict(progress.cursors)
        shard = next_shard(spec, cursors)
        if shard is None:  # a pass ended (a resumed account may stop right here)
            return await self._end_pass(spec, revision, progress)
        wait = self._next_at - self.clock()
        if wait > 0:
            await self.sleep(wait)
        # One batch is at most a second's worth: a throttle lowered mid-way bites at once.
        limit = max(1, min(self.batch, int(control.throttle_per_s)))
        done = await self.cluster.move_step(shard, cursors.get(shard, "0"), limit)
        now = self.clock()
        self._next_at = max(self._next_at, now - RATE_WINDOW_S) + done.moved / (
            control.throttle_per_s
        )
        cursors[shard] = DONE if done.cursor == "0" else done.cursor
        if done.moved or done.held:  # held: an offline under way leaves one to look at
            self._clean = False
            self.moved_total += done.moved
        progress = dataclasses.replace(
            progress, moved=progress.moved + done.moved, cursors=cursors, state="moving"
        )
        since, moved_then = self._window
        if now - since >= RATE_WINDOW_S:
            rate = (progress.moved - moved_then) / (now - since)
            progress = dataclasses.replace(progress, rate_per_s=round(rate, 3))
            self._window = (now, progress.moved)
        self.progress = progress
        if self._written_at is None or now - self._written_at >= PROGRESS_EVERY_S:
            await self._write(progress)
        return (
            f"shard {shard}: scanned {done.scanned}, moved {done.moved}; "
            f"{progress.moved} moved, about {progress.remaining} remaining{_eta(progress)}"
        )

    async def _end_pass(self, spec: RingSpec, revision: int, progress: MoverProgress) -> str:
        passes = progress.passes + 1
        if not self._clean:
            self.progress = dataclasses.replace(progress, passes=passes, cursors={})
            self._clean = True
            await self._write(self.progress)
            return f"pass {passes} over {len(walk_order(spec))} shards done; another pass"
        stable = dataclasses.replace(spec, state="stable", previous=())
        changed, _ = await self.store.change(stable, revision)
        if not changed:
            # Someone changed the ring since this step read it: read it again next step.
            self._reset()
            return f"ring version {spec.version} changed under the mover; reading it again"
        self.progress = dataclasses.replace(
            progress, passes=passes, cursors={}, state="stable", rate_per_s=0.0
        )
        await self._write(self.progress)
        self._reset()
        self._settled = spec.version
        log.warning(
            "ring mover: ring version %d is stable (%d users moved, %d passes)",
            spec.version,
            progress.moved,
            passes,
        )
        return f"ring version {spec.version} is stable: a clean pass over every shard"

    async def _write(self, progress: MoverProgress) -> None:
        now = self.clock()
        self.progress = dataclasses.replace(progress, updated_at=max(0.0, now))
        await self.store.write_progress(self.progress)
        self._written_at = now

    async def run(self, stop: asyncio.Event, idle_s: float = 1.0) -> None:
        """Step until ``stop``; idle ``idle_s`` between steps with nothing to move."""
        while not stop.is_set():
            said = await self.run_once()
            log.debug("ring mover: %s", said)
            if not self.moving:
                try:
                    await asyncio.wait_for(stop.wait(), idle_s)
                except TimeoutError:
                    pass


def _eta(progress: MoverProgress) -> str:
    eta = progress.eta_s
    return "" if eta is None else f", {progress.rate_per_s:g}/s, ETA {eta:.0f}s"
