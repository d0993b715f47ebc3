"""``imctl nodes`` and ``imctl access drain|undrain|rebalance``: the nodes a scheduler sees."""

from __future__ import annotations

import argparse
import time

from control.cli.context import admin, operator_verb
from control.cli.render import show, table

NODE_HEADERS = [
    "NODE",
    "REGION",
    "ZONE",
    "POOL",
    "VERSION",
    "STATE",
    "CONNS",
    "PENDING",
    "LOAD",
    "SOURCE",
    "REPORTED",
]


@operator_verb
def cmd_nodes(args: argparse.Namespace) -> int:
    body = admin(args).nodes()
    now = time.time()
    if args.output == "json":
        return show(args, body, "")
    rows = [
        [
            n["id"],
            n["region"],
            n["zone"] or "-",
            n["pool"],
            n["version"],
            n["state"],
            f"{n['conns']}/{n['capacity']}",
            str(n["pending"]),
            "-" if n["load"] is None else f"{n['load'] * 100:.1f}%",
            "static" if n.get("static") else "registry",
            # How fresh the load is: a node whose reports stopped shows it here first.
            f"{max(0.0, now - n['reported_at']):.0f}s ago" if n.get("reported_at") else "-",
        ]
        for n in body["nodes"]
    ]
    held = " (self-preservation: holding last view)" if body.get("held") else ""
    summary = (
        f"{len(rows)} nodes in cluster {body['cluster']}{held}; "
        f"releases: {', '.join(body['releases']) or 'none'}"
    )
    return show(args, body, table(rows, NODE_HEADERS) + "\n\n" + summary)


@operator_verb
def cmd_drain(args: argparse.Namespace) -> int:
    data = admin(args).drain(args.node, args.over)
    return show(
        args, data, f"{args.node}: draining over {args.over:g}s (requested by {data.get('by')})"
    )


@operator_verb
def cmd_undrain(args: argparse.Namespace) -> int:
    data = admin(args).undrain(args.node)
    was = "was draining" if data.get("was_draining") else "was not draining"
    return show(args, data, f"{args.node}: taking clients again ({was})")


@operator_verb
def cmd_rebalance(args: argparse.Namespace) -> int:
    data = admin(args).rebalance(args.max_rate, args.until_ratio)
    return show(
        args,
        data,
        f"rebalance requested: hot nodes shed at most {args.max_rate:g}/s until max/mean <= "
        f"{args.until_ratio:g} in each region (by {data.get('by')})",
    )
