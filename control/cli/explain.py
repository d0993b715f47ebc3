"""``imctl explain``: what the scheduler would decide for a client, and why."""

from __future__ import annotations

import argparse

from control.cli.context import admin, operator_verb
from control.cli.render import show, table


@operator_verb
def cmd_explain(args: argparse.Namespace) -> int:
    params = {"uid": args.uid, "device": args.device, "platform": args.platform}
    params["version"] = args.version
    params |= {k: v for k, v in (("region", args.region), ("ip", args.ip)) if v}
    data = admin(args).explain(params)
    unplaced = f" ({data['ip']}: no CIDR or geo database entry)" if data["ip"] else ""
    placed = {
        "parameter": "given as --region",
        "ip": f"placed by ip {data['ip']}",
        "default": "the default region" + unplaced,
        "none": "unknown (no --region, no --ip, no default region)" + unplaced,
    }[data["region_from"]]
    rows = [
        [
            v["release"],
            v["state"],
            v["outcome"],
            str(v["bucket"]),
            str(v["cutoff"]),
            "<- track" if v["chosen"] else "",
        ]
        for v in data["releases"]
    ]
    lines = [
        f"{data['uid']} ({data['platform']} {data['version']}): region "
        f"{data['region'] or '-'}, {placed}",
        f"track {data['track']} ({data['strategy']})",
        "",
        table(rows, ["RELEASE", "STATE", "OUTCOME", "BUCKET", "CUTOFF", ""])
        if rows
        else "no releases",
        "",
        f"regions in preference order: {', '.join(data['ranking']) or '-'}",
        table(
            [[r["region"], str(r["nodes"]), str(r["with_room"])] for r in data["regions"]],
            ["REGION", "NODES", "WITH ROOM"],
        ),
        "",
        f"would connect in: {data['would_connect_in'] or 'nowhere (503 no_capacity)'}",
    ]
    return show(args, data, "\n".join(lines))
