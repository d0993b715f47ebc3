"""``imctl presence ring ...``: the status cluster's ring, and resizing it while it serves
(add, remove, reweight a shard; pause, resume and throttle the mover)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from control.cli.context import admin, operator_verb
from control.cli.render import bar, duration, show, table

WATCH_INTERVAL_S = 1.0  # --watch redraws this often
WATCH_MAX_S = 86_400.0  # and gives up after a day even if the ring never settles
FOLLOW = "follow it with: imctl presence ring status --watch"


def _changes(ring: Any) -> dict[str, str]:
    """What the migration does to each shard, by id."""
    now = {s["id"]: s for s in ring["shards"]}
    before = {s["id"]: s for s in ring["previous"]}
    out: dict[str, str] = {}
    for sid, shard in now.items():
        if sid not in before:
            out[sid] = "joining"
        elif before[sid]["weight"] != shard["weight"]:
            out[sid] = f"weight {before[sid]['weight']} -> {shard['weight']}"
    for sid in before.keys() - now.keys():
        out[sid] = "leaving (its users move out)"
    return out


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}/s"


def ring_text(answer: Any) -> str:
    """``GET /v1/ring`` for people: the shards, and while migrating what changes,
    a progress bar (moved / expected), what remains, the rate and the ETA."""
    ring, control, progress = answer["ring"], answer["control"], answer["progress"]
    migrating = ring["state"] == "migrating"
    changes = _changes(ring) if migrating else {}
    shards = list(ring["shards"])
    shards += [s for s in ring["previous"] if s["id"] not in {x["id"] for x in shards}]
    rows = [[s["id"], s["url"] or "-", str(s["weight"]), changes.get(s["id"], "")] for s in shards]
    headers = ["SHARD", "URL", "WEIGHT", "CHANGE"] if migrating else ["SHARD", "URL", "WEIGHT"]
    if not migrating:
        rows = [r[:3] for r in rows]
    count = len(ring["shards"])
    if not migrating:
        head = f"ring version {ring['version']}: stable, {count} shard{'s' * (count != 1)}"
        return head + "\n\n" + table(rows, headers)
    lines = [
        f"ring version {ring['version']}: migrating from {len(ring['previous'])} to {count} "
        f"shards ({answer['moved_fraction'] * 100:.1f}% of users move, ideally)",
        "",
        table(rows, headers),
        "",
    ]
    mover = "paused" if control["paused"] else "running"
    throttle = f"throttle {_rate(control['throttle_per_s'])}"
    if progress is None or progress["version"] != ring["version"]:
        lines.append(f"mover: {mover}, {throttle}; not started yet (the leader controller moves)")
        return "\n".join(lines)
    moved, expected, rate = progress["moved"], progress["expected"], progress["rate_per_s"]
    remaining = max(0, expected - moved)
    eta = "paused" if control["paused"] else duration(remaining / rate if rate > 0 else None)
    lines.append(
        f"{bar(moved, expected)}  {moved:,} / {expected:,} users moved, {remaining:,} remaining"
    )
    lines.append(f"rate {_rate(rate)}, ETA {eta}; pass {progress['passes'] + 1}")
    lines.append(f"mover: {mover}, {throttle} (by {progress['by'] or '-'})")
    return "\n".join(lines)


def _watch(args: argparse.Namespace) -> int:
    """Redraw every WATCH_INTERVAL_S until the ring is stable (or Ctrl-C). On a terminal
    each frame replaces the last; piped, frames follow one another (JSON: one a line)."""
    client = admin(args)
    redraw = sys.stdout.isatty() and args.output != "json"
    drawn = 0
    deadline = time.monotonic() + WATCH_MAX_S
    try:
        while True:
            answer = client.ring()
            if args.output == "json":
                print(json.dumps(answer, sort_keys=True), flush=True)
            else:
                text = ring_text(answer)
                if redraw and drawn:
                    print(f"\x1b[{drawn}F\x1b[J", end="")  # up over the last frame, clear
                elif drawn:
                    print()
                print(text, flush=True)
                drawn = text.count("\n") + 1
            if answer["ring"]["state"] == "stable" or time.monotonic() >= deadline:
                return 0
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        return 130


@operator_verb
def cmd_ring_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    answer = admin(args).ring()
    return show(args, answer, ring_text(answer))


@operator_verb
def cmd_ring_add(args: argparse.Namespace) -> int:
    answer = admin(args).ring_add(args.url, args.weight, args.id)
    ring = answer["ring"]
    shard = ring["shards"][-1]
    return show(
        args,
        answer,
        f"ring version {ring['version']}: adding shard {shard['id']} ({shard['url']}, weight "
        f"{shard['weight']}); users whose owner becomes it move there\n{FOLLOW}",
    )


@operator_verb
def cmd_ring_remove(args: argparse.Namespace) -> int:
    ring = (answer := admin(args).ring_remove(args.shard))["ring"]
    return show(
        args,
        answer,
        f"ring version {ring['version']}: removing shard {args.shard}; its users move to "
        f"the other {len(ring['shards'])} before it leaves\n{FOLLOW}",
    )


@operator_verb
def cmd_ring_reweight(args: argparse.Namespace) -> int:
    ring = (answer := admin(args).ring_reweight(args.shard, args.weight))["ring"]
    before = next((s["weight"] for s in ring["previous"] if s["id"] == args.shard), "?")
    return show(
        args,
        answer,
        f"ring version {ring['version']}: shard {args.shard} weight {before} -> {args.weight}"
        f"\n{FOLLOW}",
    )


def _control_text(control: Any) -> str:
    state = "paused" if control["paused"] else "running"
    return f"mover {state}, throttle {_rate(control['throttle_per_s'])}"


@operator_verb
def cmd_ring_pause(args: argparse.Namespace) -> int:
    answer = admin(args).ring_pause(True)
    return show(args, answer, _control_text(answer["control"]))


@operator_verb
def cmd_ring_resume(args: argparse.Namespace) -> int:
    answer = admin(args).ring_pause(False)
    return show(args, answer, _control_text(answer["control"]))


@operator_verb
def cmd_ring_throttle(args: argparse.Namespace) -> int:
    answer = admin(args).ring_throttle(args.users_per_s)
    return show(args, answer, _control_text(answer["control"]))
