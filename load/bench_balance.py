"""Balance benchmark: 100k assignments from 4 schedulers sharing a registry whose load
reports arrive every 2 s, over 20 equal nodes. A virtual clock drives it, so the result
does not depend on how busy this machine is.

    python -m load.bench_balance [--assignments 100000] [--rate 2000] [--runs 5]

Compares the project's pipeline (power of two choices on (conns + pending) / capacity)
with plain least-connections on the reported counts, and least-connections with pending.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import replace

from control.common.registry import NodeRecord
from control.gray.model import UserContext, Version
from control.scheduler.engine import Engine
from control.scheduler.proximity import RegionMap

NODES = 20
SCHEDULERS = 4
REPORT_S = 2.0


class Cluster:
    """True connection counts and the registry records the schedulers see."""

    def __init__(self, rng: random.Random) -> None:
        self.conns = {f"n{i:02d}": 0 for i in range(NODES)}
        # Nodes report on their own phase within the 2 s period, as real ones do.
        self.phase = {nid: rng.uniform(0, REPORT_S) for nid in self.conns}
        self.records = {
            nid: NodeRecord(
                id=nid, endpoint=f"ws://x/{nid}", region="r", capacity=1_000_000, reported_at=0.0
            )
            for nid in self.conns
        }

    def report_due(self, now: float, last: float) -> bool:
        changed = False
        for nid, phase in self.phase.items():
            # a report happened in (last, now] if a multiple of REPORT_S + phase falls there
            k_now = int((now - phase) // REPORT_S)
            k_last = int((last - phase) // REPORT_S)
            if k_now > k_last and now >= phase:
                self.records[nid] = replace(
                    self.records[nid], conns=self.conns[nid], reported_at=now
                )
                changed = True
        return changed


def run_p2c(assignments: int, rate: float, seed: int) -> float:
    rng = random.Random(seed)
    cluster = Cluster(rng)
    clock = [0.0]
    engines = [
        Engine(
            RegionMap(known=("r",)),
            pending_window_s=30,
            rng=random.Random(seed + i),
            fallback_count=0,
            clock=lambda: clock[0],
        )
        for i in range(SCHEDULERS)
    ]
    for e in engines:
        e.set_nodes(dict(cluster.records))
        e.rebuild()
    user = UserContext("u", "ios", Version.parse("1"), "r")
    last = 0.0
    for i in range(assignments):
        now = i / rate
        clock[0] = now
        if cluster.report_due(now, last):
            for e in engines:
                e.set_nodes(dict(cluster.records))
                e.rebuild()
        last = now
        decision = engines[rng.randrange(SCHEDULERS)].assign(user)
        assert decision is not None
        cluster.conns[decision.node.id] += 1
    return max(cluster.conns.values()) / statistics.mean(cluster.conns.values())


def run_least_conn(assignments: int, rate: float, seed: int, with_pending: bool) -> float:
    rng = random.Random(seed)
    cluster = Cluster(rng)
    pending = [dict.fromkeys(cluster.conns, 0) for _ in range(SCHEDULERS)]
    last = 0.0
    for i in range(assignments):
        now = i / rate
        if cluster.report_due(now, last):
            for nid, rec in cluster.records.items():
                if rec.reported_at == now:
                    for p in pending:
                        p[nid] = 0
        last = now
        mine = pending[rng.randrange(SCHEDULERS)]
        scores = {
            n: cluster.records[n].conns + (mine[n] if with_pending else 0) for n in cluster.conns
        }
        best = min(scores.values())
        choice = rng.choice([n for n, score in scores.items() if score == best])
        mine[choice] += 1
        cluster.conns[choice] += 1
    return max(cluster.conns.values()) / statistics.mean(cluster.conns.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--assignments", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=2000.0, help="assignments per second")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, list[float]] = {
        "p2c+pending": [],
        "least-conn": [],
        "least-conn+pending": [],
    }
    for run in range(args.runs):
        results["p2c+pending"].append(run_p2c(args.assignments, args.rate, run))
        results["least-conn"].append(run_least_conn(args.assignments, args.rate, run, False))
        results["least-conn+pending"].append(run_least_conn(args.assignments, args.rate, run, True))
    summary = {
        k: {
            "median_max_over_mean": round(statistics.median(v), 4),
            "runs": [round(x, 4) for x in v],
        }
        for k, v in results.items()
    }
    print(
        json.dumps(
            {
                "assignments": args.assignments,
                "rate_per_s": args.rate,
                "nodes": NODES,
                "schedulers": SCHEDULERS,
                "report_s": REPORT_S,
                "results": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
