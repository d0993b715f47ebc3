"""The parent of a load run: spawns the workers, names the start, merges their windows
once a second into a ``Timeline``, polls the cluster's view (connections per node from
``/v1/nodes``), carries out the scenario's operator steps, shows progress, and at the end
compares its count of connected clients with the cluster's presence count and writes the
report."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queues
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.cli.admin_client import AdminClient, AdminError
from load.gen import worker
from load.gen.operator import Done, Operator, plan
from load.gen.scenario import Scenario
from load.gen.stats import Timeline, Window

POLL_TIMEOUT_S = 2.0  # an admin call in the once-a-second loop
AGREE_WITHIN_S = 15.0  # at the end: presence catches up with the clients (flush, reports)
JOIN_WITHIN_S = 30.0
# The workers report on the same second ticks as the parent seals: it waits this much past
# each tick for their reports of it, so a second's gauges are of its own end, not the one
# before (a kill's "before" is then a quarter second old, not a second and more).
SEAL_AFTER_S = 0.25


@dataclass
class Result:
    """Everything the report is rendered from."""

    scenario: Scenario
    timeline: Timeline
    node_conns: list[dict[str, int]] = field(default_factory=list)  # per second, by node
    done: list[Done] = field(default_factory=list)
    gave_up: dict[str, int] = field(default_factory=dict)
    online_end: int = 0  # clients connected as the run ended, by the generator's count
    presence_end: int | None = None  # the cluster's own count then (None: not reachable)
    presence_by_node: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


class LoadError(Exception):
    """The run could not start (the cluster not reachable, a worker that never came up)."""


def _nodes(admin: AdminClient) -> dict[str, int] | None:
    try:
        listed = admin.nodes()
        return {str(n["id"]): int(n.get("conns", 0)) for n in listed["nodes"]}
    except (AdminError, KeyError, TypeError, ValueError):
        return None


def _presence(admin: AdminClient, region: str | None) -> tuple[int, dict[str, int]] | None:
    """The cluster's presence count (of ``region``'s nodes when the run's clients name one:
    other clients may share the cluster elsewhere), and the whole cluster's by node."""
    try:
        if region is None:
            total = int(admin.count(None)["total"])
        else:
            total = int(admin.count("region")["counts"].get(region, 0))
        by_node = admin.count("node")
        return total, {str(k): int(v) for k, v in by_node["counts"].items()}
    except (AdminError, KeyError, TypeError, ValueError, AttributeError):
        return None


def run(
    s: Scenario,
    progress: Callable[[int, Window, Result], None] | None = None,
    started: Callable[[], object] | None = None,
) -> Result:
    """One run of ``s``; ``progress`` is told about each sealed second, ``started`` once
    the workers are up (threads may start then: the workers are forked before)."""
    admin = AdminClient(s.server, s.admin_token, timeout_s=POLL_TIMEOUT_S)
    if _nodes(admin) is None:
        try:
            admin.nodes()
        except AdminError as exc:
            raise LoadError(f"the cluster's admin API: {exc}") from None
        raise LoadError(f"{s.server}/v1/nodes: not an imctl scheduler's answer")
    # Forked, not spawned: a worker starts with the parent's modules already imported
    # (seconds under load per worker otherwise). Nothing in the parent runs a thread yet.
    ctx = mp.get_context("fork")
    q: Any = ctx.Queue()
    stop = ctx.Event()
    start = ctx.Value("d", 0.0)
    n = s.worker_count
    share = -(-s.clients // n)
    procs = []
    for w in range(n):
        indices = range(w * share, min(s.clients, (w + 1) * share))
        p = ctx.Process(
            target=worker.main, args=(w, s, indices, start, q, stop), name=f"load-worker-{w}"
        )
        p.start()
        procs.append(p)
    result = Result(s, Timeline())
    # Changes get the admin client's usual patience; the once-a-second look a short one.
    operator = Operator(AdminClient(s.server, s.admin_token), plan(s))
    began = time.monotonic()
    # Admin calls run beside the loop (a slow scheduler must not stretch the run's seconds):
    # one thread looks at the nodes, one carries out the operator's steps in order.
    looks, steps = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    look: Future[dict[str, int] | None] | None = None
    step: Future[object] | None = None
    latest: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        if started is not None:
            started()
        _wait_ready(q, procs, n, result)
        # Steps at 0 s (a release created before anyone asks) come before the first client.
        operator.run_once(0.0)
        start.value = time.time() + 0.5
        t0 = time.monotonic() + 0.5
        second = 0
        while second < s.duration_s:
            second += 1
            _drain(q, result, until=t0 + second + SEAL_AFTER_S)
            sealed = result.timeline.seal(second - 1)
            if look is None or look.done():
                latest = (look.result() if look else None) or latest
                look = looks.submit(_nodes, admin)
            result.node_conns.append(latest)
            if step is None or step.done():
                step = steps.submit(operator.run_once, time.monotonic() - t0)
            if progress is not None:
                progress(second, sealed, result)
        result.online_end, result.presence_end, result.presence_by_node = _agree(q, result, admin)
    finally:
        looks.shutdown(wait=True, cancel_futures=True)
        steps.shutdown(wait=True)
        operator.finish(time.monotonic() - t0)
        result.done = operator.done
        stop.set()
        _finish(q, procs, result)
        result.wall_s = time.monotonic() - began
    return result


def _wait_ready(q: Any, procs: list[Any], n: int, result: Result) -> None:
    ready: set[int] = set()
    deadline = time.monotonic() + worker.READY_WITHIN_S
    while len(ready) < n:
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
            raise LoadError(f"{n - len(ready)} of {n} worker(s) did not start")
        with contextlib.suppress(queues.Empty):
            kind, w, _ = q.get(timeout=0.2)
            if kind == "ready":
                ready.add(w)


def _drain(q: Any, result: Result, until: float) -> None:
    """Take the workers' messages until the monotonic moment ``until``."""
    while True:
        left = until - time.monotonic()
        try:
            kind, w, data = q.get(timeout=max(left, 0.0)) if left > 0 else q.get_nowait()
        except queues.Empty:
            return
        if kind == "window":
            second, window = data
            result.timeline.add(second, w, Window.from_data(window))
        elif kind == "done":
            for k, v in data.items():
                result.gave_up[k] = result.gave_up.get(k, 0) + v


def _agree(q: Any, result: Result, admin: AdminClient) -> tuple[int, int | None, dict[str, int]]:
    """The generator's count of connected clients and the cluster's presence count, read
    until they agree (presence is written in batches) or AGREE_WITHIN_S."""
    deadline = time.monotonic() + AGREE_WITHIN_S
    seen: tuple[int, dict[str, int]] | None = None
    while True:
        _drain(q, result, until=time.monotonic() + 0.5)
        ours = sum(w.online for w in result.timeline.last.values())
        seen = _presence(admin, result.scenario.region) or seen
        if (seen is not None and seen[0] == ours) or time.monotonic() > deadline:
            return ours, (seen[0] if seen else None), (seen[1] if seen else {})


def _finish(q: Any, procs: list[Any], result: Result) -> None:
    deadline = time.monotonic() + JOIN_WITHIN_S
    done = 0
    while done < len(procs) and time.monotonic() < deadline:
        if all(p.exitcode is not None for p in procs) and q.empty():
            break
        try:
            kind, w, data = q.get(timeout=0.2)
        except queues.Empty:
            continue
        if kind == "window":  # the last one: closes and late acks, into the last second
            second, window = data
            last = max(0, len(result.timeline.seconds) - 1)
            result.timeline.add(min(second, last), w, Window.from_data(window))
        elif kind == "done":
            done += 1
            for k, v in data.items():
                result.gave_up[k] = result.gave_up.get(k, 0) + v
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(5)


def report_dir(s: Scenario) -> Path:
    return Path(s.report)
