"""``imctl presence who|count|events``: who is online, and their logins as they happen."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from control.cli.admin_client import AdminClient, AdminError
from control.cli.context import EXIT_UNAVAILABLE, admin, fail, operator_verb
from control.cli.render import show, table


@operator_verb
def cmd_presence_who(args: argparse.Namespace) -> int:
    if len(args.uid) > 1:
        return _presence_lookup(args)
    (uid,) = args.uid
    data = admin(args).presence(uid)
    if not data["devices"]:
        return show(args, data, f"{uid}: offline")
    rows = [
        [
            d["device"],
            d["node"],
            d["conn"],
            d["status"],
            d["region"] or "-",
            d["platform"] or "-",
            f"{max(0.0, time.time() - d['last_seen']):.0f}s ago",
        ]
        for d in data["devices"]
    ]
    headers = ["DEVICE", "NODE", "CONN", "STATUS", "REGION", "PLATFORM", "LAST SEEN"]
    return show(args, data, table(rows, headers))


def _presence_lookup(args: argparse.Namespace) -> int:
    """Several users in one batch lookup (no last seen: that costs a read per user)."""
    data = admin(args).lookup(args.uid)
    rows = [
        [uid, d["device"], d["node"], d["conn"], d["status"], d["region"] or "-"]
        for uid, devices in data["online"].items()
        for d in devices
    ]
    offline = data["offline"]
    lines = [table(rows, ["UID", "DEVICE", "NODE", "CONN", "STATUS", "REGION"]), ""] if rows else []
    lines.append(
        f"{len(data['online'])} of {len(data['online']) + len(offline)} online"
        + (f"; offline: {', '.join(offline)}" if offline else "")
    )
    return show(args, data, "\n".join(lines))


@operator_verb
def cmd_presence_count(args: argparse.Namespace) -> int:
    data = admin(args).count(args.by)
    if not args.by:
        return show(args, data, f"{data['total']} online")
    # An empty name (clients that named no ?platform=) shows as (none), never a blank row.
    rows = [[k or "(none)", str(v)] for k, v in data["counts"].items()]
    text = table(rows, [args.by.upper(), "ONLINE"]) + f"\n\n{data['total']} online in all"
    return show(args, data, text)


@operator_verb
def cmd_presence_status(args: argparse.Namespace) -> int:
    data = admin(args).presence_status()
    return show(args, data, status_text(data))


def status_text(data: Any) -> str:
    """The engine, then one row per member (a shard, or a cluster node) with its health."""
    head = f"engine: {data['engine']}  " + ("healthy" if data["healthy"] else "DEGRADED")
    if "ring" in data:
        head += f"  ring v{data['ring']['version']} ({data['ring']['state']})"
        rows = [
            [
                m["id"],
                m["engine"],
                m.get("url", "-"),
                m["health"],
                m["breaker"],
                str(m.get("online", "-")),
            ]
            for m in data["members"]
        ]
        headers = ["SHARD", "ENGINE", "URL", "HEALTH", "BREAKER", "ONLINE"]
    else:
        head += f"  {data['slots_served']}/16384 slots served, {data['buckets']} buckets"
        rows = [
            [m["addr"], m["role"], m["id"][:8], m["master"][:8], m["health"], str(m["slots"])]
            for m in data["members"]
        ]
        headers = ["NODE", "ROLE", "ID", "MASTER", "HEALTH", "SLOTS"]
    return head + "\n\n" + table(rows, headers)


def event_line(event: Any) -> str:
    """An event as a table line: local time to the millisecond, kind, uid, device, node,
    connection, reason."""
    at = float(event["at"])
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    fields = [event["kind"].ljust(7), event["uid"], event["device"], event["node"]]
    fields += [event["conn"], event.get("reason") or ""]
    return " ".join([stamp, *(str(f) for f in fields)])


async def _tail(client: AdminClient, uid: str | None, output: str, count: int | None) -> int:
    seen = 0
    async with client.events(uid, count) as stream:
        print(
            f"# following presence events at {stream.url} (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        async for line in stream.lines:
            if not line.strip():
                continue  # keepalive
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):
                return fail(f"{stream.url}: not a presence event: {line[:80]!r}", EXIT_UNAVAILABLE)
            seen += 1
            if output == "json":
                print(json.dumps(event, ensure_ascii=False), flush=True)
                continue
            print(event_line(event), flush=True)
    if count is not None and seen >= count:
        return 0
    # A tail has no end of its own: the scheduler stopped (or restarted). Scripts see it.
    return fail(
        f"{stream.url}: the scheduler ended the stream after {seen} event(s)", EXIT_UNAVAILABLE
    )


@operator_verb
def cmd_presence_events(args: argparse.Namespace) -> int:
    client = admin(args)
    try:
        return asyncio.run(_tail(client, args.uid, args.output, args.count))
    except AdminError as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
