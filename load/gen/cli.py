"""``imctl load`` (run as ``python -m load.gen``): the command line, a scenario file under
it, the progress bar, the report. Exit 0 when every client ended connected and the
cluster's presence count agrees; 1 when not, or when the run could not start; 2 for a bad
flag or file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from load.gen.scenario import KINDS, Scenario, ScenarioError, parse, read_file

PROG = "imctl load"
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Run a population of simulated clients against a running cluster (ask "
        "the scheduler, connect, heartbeat, message each other, churn, follow reconnects) "
        "and write a report. Flags override the scenario file's keys.",
    )
    p.add_argument("-f", "--file", help="a YAML scenario file (keys as the flags, below)")
    p.add_argument("--scenario", choices=KINDS, help="steady (default), storm, gray or drain")
    p.add_argument("--server", help="scheduler URL (default http://127.0.0.1:8080)")
    p.add_argument("--clients", type=int, help="simulated clients (default 100)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per 12,500)")
    p.add_argument("--duration", type=float, dest="duration_s", help="seconds in all")
    p.add_argument("--ramp", type=float, dest="ramp_s", help="connect over this long")
    p.add_argument("--settle", type=float, dest="settle_s", help="quiet seconds at the end")
    p.add_argument(
        "--message-interval", type=float, dest="message_interval_s", help="s; 0: no messages"
    )
    p.add_argument("--churn", type=float, dest="logouts_per_s", help="logouts/s (all clients)")
    p.add_argument("--uid-prefix", help="uids are PREFIX0..PREFIXn-1 (default load-)")
    p.add_argument("--platforms", help="comma-separated (default ios,android)")
    p.add_argument(
        "--region",
        help="the region the clients ask for (the presence count "
        "compared at the end is then that region's)",
    )
    p.add_argument("--config", help="cluster config with the key to mint tokens (as imctl token)")
    p.add_argument("--tokens", choices=["mint", "none"], help="mint (default) or none")
    p.add_argument("--token", dest="admin_token", help="admin API token (default $IMCTL_TOKEN)")
    p.add_argument("--kill-pid", type=int, help="storm: kill -9 this access node process")
    p.add_argument("--kill-node", help="storm: drain this node over 0 s instead")
    p.add_argument("--drain-node", help="drain: the node to drain")
    p.add_argument("--at", type=float, help="storm/drain/gray: seconds into the run")
    p.add_argument("--report", help="directory for report.md (default ./load-report)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_FLAGS = (
    "scenario",
    "server",
    "clients",
    "workers",
    "duration_s",
    "ramp_s",
    "settle_s",
    "message_interval_s",
    "uid_prefix",
    "platforms",
    "region",
    "config",
    "tokens",
    "admin_token",
    "report",
    "seed",
)


def scenario_from(args: argparse.Namespace, environ: dict[str, str]) -> Scenario:
    """The file's keys with the flags over them; ScenarioError listing every problem."""
    data: dict[str, Any] = read_file(args.file) if args.file else {}
    where = f"{args.file}: " if args.file else ""
    for key in _FLAGS:
        value = getattr(args, key)
        if value is not None:
            data[key] = value
            where = where if args.file else ""
    if args.logouts_per_s is not None:
        data["churn"] = {**(data.get("churn") or {}), "logouts_per_s": args.logouts_per_s}
    if args.no_progress:
        data["progress"] = False
    if "admin_token" not in data and environ.get("IMCTL_TOKEN"):
        data["admin_token"] = environ["IMCTL_TOKEN"]
    kind = data.get("scenario", "steady")
    action: dict[str, Any] = dict(data.get(kind) or {}) if kind in ("storm", "drain") else {}
    if args.kill_pid is not None:
        action["pid"] = args.kill_pid
    if args.kill_node is not None:
        action["node"] = args.kill_node
    if args.drain_node is not None:
        action["node"] = args.drain_node
    if args.at is not None:
        if kind == "gray":
            data["gray"] = {**(data.get("gray") or {}), "at_s": args.at}
        else:
            action["at_s"] = args.at
    if action:
        data[kind] = action
    return parse(data, where)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    try:
        scenario = scenario_from(args, dict(os.environ))
    except ScenarioError as exc:
        print(f"{PROG}: bad scenario:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    return execute(scenario)


def execute(scenario: Scenario) -> int:
    from pathlib import Path

    from load.gen import report
    from load.gen.progress import Bar
    from load.gen.run import LoadError, run
    from load.gen.worker import token_source

    token_source(scenario)  # a config without a key to mint with: its clear line, now
    try:
        with Bar(scenario) as bar:
            result = run(scenario, bar.update, report.preload)
    except LoadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    path = report.write(result, Path(scenario.report))
    lost = scenario.clients - result.online_end
    print(
        f"{result.online_end:,} of {scenario.clients:,} clients connected at the end; the "
        f"cluster counts {result.presence_end if result.presence_end is not None else '?'} "
        f"online; report: {path}"
    )
    if lost or result.presence_end != result.online_end:
        print(f"{PROG}: {lost} client(s) lost, or the presence count disagrees", file=sys.stderr)
        return 1
    return 0
