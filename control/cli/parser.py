"""The one place the ``imctl`` command line is built: every verb, its arguments and the
function that runs it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from control.cli.args import parse_duration, positive_count, server_url, token_ttl, user_id
from control.cli.config_check import cmd_config_check
from control.cli.connect import cmd_connect
from control.cli.context import EXIT_USAGE
from control.cli.explain import cmd_explain
from control.cli.gray import (
    cmd_gray_apply,
    cmd_gray_create,
    cmd_gray_delete,
    cmd_gray_history,
    cmd_gray_list,
    cmd_gray_pause,
    cmd_gray_promote,
    cmd_gray_resume,
    cmd_gray_rollback,
    cmd_gray_set_percent,
    cmd_gray_status,
    cmd_gray_step,
    history_limit,
    revision_number,
)
from control.cli.lb import cmd_lb_render, cmd_lb_watch
from control.cli.nodes import cmd_drain, cmd_nodes, cmd_rebalance, cmd_undrain
from control.cli.presence import (
    cmd_presence_count,
    cmd_presence_events,
    cmd_presence_status,
    cmd_presence_who,
)
from control.cli.processes import cmd_access, cmd_controller, cmd_scheduler, cmd_up
from control.cli.ring import (
    cmd_ring_add,
    cmd_ring_pause,
    cmd_ring_remove,
    cmd_ring_resume,
    cmd_ring_reweight,
    cmd_ring_status,
    cmd_ring_throttle,
)
from control.cli.tokens import cmd_token


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        # The prog already starts with "imctl" (``imctl connect``): no second prefix.
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        "-o",
        choices=["table", "json"],
        default="table",
        help="json: logs as one JSON object a line (as log_format: json)",
    )


def _admin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        type=server_url,
        help="scheduler URL (default: $IMCTL_SERVER, else from --config)",
    )
    p.add_argument("--config", help="config file to find the scheduler address in")
    p.add_argument("--token", help="admin bearer token (default: $IMCTL_TOKEN)")
    p.add_argument(
        "--cacert",
        default="",
        help="CA file to trust for an https:// server (a private CA; default: the system's)",
    )
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")


def _ring_parsers(presence: Any) -> None:
    """``imctl presence ring ACTION``, each with --server, --token and --output."""
    r = presence.add_parser(
        "ring",
        help="the status cluster's shards, and resizing them while live",
        description="Show the ring of status shards, or change it: each change raises the "
        "ring's version and starts a migration the leader controller carries out (only "
        "users whose shard changes move); one change at a time.",
    )
    rsub = r.add_subparsers(dest="ring_command", metavar="ACTION", parser_class=_Parser)
    rsub.required = True
    p = rsub.add_parser(
        "status",
        help="shards, version, and the migration's progress",
        description="The shards and the ring version; while migrating, a progress bar "
        "(users moved / expected), remaining, rate and ETA.",
    )
    p.add_argument("--watch", action="store_true", help="redraw every second until stable")
    p.set_defaults(func=cmd_ring_status)
    p = rsub.add_parser(
        "add", help="add a shard", description="Add the shard at URL (it must answer PING)."
    )
    p.add_argument("url", metavar="URL", help="redis://host:port/db, or embedded:ID locally")
    p.add_argument("--weight", type=int, help="share of users (1-100; default 1)")
    p.add_argument("--id", help="shard id (default: the embedded id, else s<N>)")
    p.set_defaults(func=cmd_ring_add)
    p = rsub.add_parser(
        "remove",
        help="remove a shard",
        description="Take SHARD off the ring: its users move to the others first.",
    )
    p.add_argument("shard", metavar="SHARD")
    p.set_defaults(func=cmd_ring_remove)
    p = rsub.add_parser(
        "reweight", help="change a shard's weight", description="Give SHARD weight N (1-100)."
    )
    p.add_argument("shard", metavar="SHARD")
    p.add_argument("weight", metavar="N", type=int)
    p.set_defaults(func=cmd_ring_reweight)
    for name, func, text in (
        ("pause", cmd_ring_pause, "stop moving users (the ring stays migrating)"),
        ("resume", cmd_ring_resume, "move users again"),
    ):
        p = rsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.set_defaults(func=func)
    p = rsub.add_parser(
        "throttle",
        help="limit how fast users move",
        description="Move at most USERS_PER_S users a second (takes effect on the next batch).",
    )
    p.add_argument("users_per_s", metavar="USERS_PER_S", type=float)
    p.set_defaults(func=cmd_ring_throttle)
    for action in rsub.choices.values():
        _admin_args(action)


def _change_args(p: argparse.ArgumentParser) -> None:
    """What every gray change takes: why (kept in the audit), and the revision it is for."""
    p.add_argument("--reason", help="why, kept in the release's history")
    p.add_argument(
        "--revision",
        type=revision_number,
        help="change only if the release is still at this revision (else: conflict)",
    )


def _gray_parsers(sub: Any) -> None:
    """``imctl gray ACTION``, each with --server, --token and --output."""
    g = sub.add_parser(
        "gray",
        help="gray releases: create, step, pause, promote, roll back",
        description="Gray releases of access-node versions, through the admin API: every "
        "change is a compare-and-swap on the release's revision and leaves a history record.",
    )
    gsub = g.add_subparsers(dest="gray_command", metavar="ACTION", parser_class=_Parser)
    gsub.required = True
    for name, func, text in (
        ("create", cmd_gray_create, "create the release a file holds"),
        ("apply", cmd_gray_apply, "replace a release's rules with the file's"),
    ):
        p = gsub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + " (YAML or JSON, one release in the "
            "shape of an entry of gray.releases); every problem is listed at once.",
        )
        p.add_argument("-f", "--file", required=True, help="the release file (-: stdin)")
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="show the diff and the share of users that would move; write nothing",
        )
        p.add_argument("--reason", help="why, kept in the release's history")
        if name == "apply":
            p.add_argument("--revision", type=revision_number, help="apply only over this revision")
        p.set_defaults(func=func)
    p = gsub.add_parser("list", help="every release", description="Every release, by name.")
    p.set_defaults(func=cmd_gray_list)
    p = gsub.add_parser(
        "status", help="one release", description="NAME's rules, percent, step and state."
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_gray_status)
    p = gsub.add_parser(
        "set-percent",
        help="set the share of matching users",
        description="Set NAME's percent to P (0-100, 0.01 steps). Raising it only adds "
        "users; lowering it takes users out.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("percent", metavar="P", type=float)
    _change_args(p)
    p.set_defaults(func=cmd_gray_set_percent)
    for name, func, text in (
        ("step", cmd_gray_step, "raise the percent to the next of the release's steps"),
        ("pause", cmd_gray_pause, "hold a running release (it keeps routing its users)"),
        ("resume", cmd_gray_resume, "run a paused release again"),
        ("promote", cmd_gray_promote, "set 100% and end the release as promoted"),
    ):
        p = gsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("name", metavar="NAME")
        _change_args(p)
        p.set_defaults(func=func)
    p = gsub.add_parser(
        "rollback",
        help="take every user out of the release and end it",
        description="Set NAME to 0% and end it (rolled_back); --over is how long its "
        "connections get to leave the canary nodes.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--over", type=parse_duration, default=60.0, help="60s, 2m... (default 60s)")
    _change_args(p)
    p.set_defaults(func=cmd_gray_rollback)
    p = gsub.add_parser(
        "history",
        help="who changed a release, when and why",
        description="NAME's changes, oldest first: action, revisions, who, what, why.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--limit", type=history_limit, default=100, help="the last N (default 100)")
    p.set_defaults(func=cmd_gray_history)
    p = gsub.add_parser(
        "delete", help="delete a release", description="Delete NAME (ended or not)."
    )
    p.add_argument("name", metavar="NAME")
    _change_args(p)
    p.set_defaults(func=cmd_gray_delete)
    for action in gsub.choices.values():
        _admin_args(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imctl",
        description="imctl: the access layer of an IM system (scheduler, access nodes, "
        "presence, gray release).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "up",
        help="run a complete local cluster on embedded backends",
        description="Run the local cluster and print where clients should ask.",
    )
    p.add_argument("--config", help="config file (default: the packaged local.yaml)")
    _run_args(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "scheduler",
        help="run a scheduler",
        description="Serve GET /v1/endpoint and the operator endpoints.",
    )
    p.add_argument("--config", required=True, help="config file")
    _run_args(p)
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser(
        "nodes",
        help="list access nodes with their load",
        description="List the nodes a running scheduler sees, with load.",
    )
    _admin_args(p)
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser(
        "access",
        help="run an access node, or drain one",
        description="Run an access node (--config, --node-id), or drain/undrain a running one "
        "through the admin API.",
    )
    p.add_argument("--config", help="config file (to run a node)")
    p.add_argument("--node-id", help="which of access.nodes to run")
    _run_args(p)
    p.set_defaults(func=cmd_access, access_command=None)
    asub = p.add_subparsers(dest="access_command", metavar="ACTION", parser_class=_Parser)
    d = asub.add_parser(
        "drain",
        help="stop new clients and move connected ones elsewhere",
        description="Mark NODE draining: it takes no new clients and tells connected ones to "
        "reconnect, spread over --over.",
    )
    d.add_argument("node", metavar="NODE")
    d.add_argument(
        "--over",
        type=parse_duration,
        default=60.0,
        help="spread reconnects over this long (60s, 2m...; default 60s)",
    )
    _admin_args(d)
    d.set_defaults(access_func=cmd_drain)
    u = asub.add_parser(
        "undrain",
        help="let a drained node take clients again",
        description="Cancel a drain request for NODE.",
    )
    u.add_argument("node", metavar="NODE")
    _admin_args(u)
    u.set_defaults(access_func=cmd_undrain)
    r = asub.add_parser(
        "rebalance",
        help="spread connections after new nodes joined",
        description="Hot nodes of each region shed connections (reconnect frames, as a drain "
        "sends) until max/mean connections per node is within --until-ratio.",
    )
    r.add_argument(
        "--max-rate", type=float, default=100.0, help="reconnects per second, cluster-wide"
    )
    r.add_argument("--until-ratio", type=float, default=1.1, help="stop at this max/mean")
    _admin_args(r)
    r.set_defaults(access_func=cmd_rebalance)

    p = sub.add_parser(
        "controller",
        help="run the presence controller",
        description="Leader-elected expiry sweep and dead-node cleanup.",
    )
    p.add_argument("--config", required=True, help="config file")
    _run_args(p)
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser(
        "presence",
        help="who is online; the status cluster's ring",
        description="Look up users and count who is online; show and resize the ring of "
        "status shards.",
    )
    psub = p.add_subparsers(dest="presence_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    w = psub.add_parser(
        "who",
        help="where users are connected",
        description="Every device of UID: node, connection, status, last seen. Several "
        "UIDs (up to 10,000) are looked up in one batch, without last seen.",
    )
    w.add_argument("uid", metavar="UID", type=user_id, nargs="+")
    _admin_args(w)
    w.set_defaults(func=cmd_presence_who)
    c = psub.add_parser(
        "count",
        help="exact online counts",
        description="Online (user, device) entries, in all or by a dimension.",
    )
    c.add_argument("--by", choices=["region", "node", "platform"])
    _admin_args(c)
    c.set_defaults(func=cmd_presence_count)
    st = psub.add_parser(
        "status",
        help="the presence engine, its members and their health",
        description="The engine (ring of shards, or Redis Cluster), each member (a shard "
        "with its breaker and online count, or a cluster node with its role and slots) "
        "and whether it answers.",
    )
    _admin_args(st)
    st.set_defaults(func=cmd_presence_status)
    e = psub.add_parser(
        "events",
        help="follow logins, logouts and status changes as they happen",
        description="Print presence events as they happen (time, kind, uid, device, node, "
        "connection, reason) until Ctrl-C or --count.",
    )
    e.add_argument("--uid", type=user_id, help="only this user's events")
    e.add_argument("--count", type=positive_count, help="stop after this many events")
    _admin_args(e)
    e.set_defaults(func=cmd_presence_events)
    _ring_parsers(psub)

    _gray_parsers(sub)

    p = sub.add_parser(
        "explain",
        help="why a client would get its track and region",
        description="Ask the scheduler what it would decide for a client, and why: every "
        "gray release's verdict (bucket against cutoff), where the region comes from, the "
        "regions it would try. Nothing is assigned.",
    )
    p.add_argument("--uid", required=True, type=user_id)
    p.add_argument("--platform", required=True)
    p.add_argument("--version", required=True, help="app version, e.g. 5.1.0")
    p.add_argument("--device", default="cli-1")
    p.add_argument("--region", help="the client's region= parameter")
    p.add_argument("--ip", help="place the client by this address instead")
    _admin_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "connect",
        help="connect as a client (ask the scheduler, open the WebSocket)",
        description="A reference client: asks the scheduler for an endpoint, opens the "
        "WebSocket, keeps the heartbeat, prints frames and sends each stdin line as a frame.",
    )
    p.add_argument("--uid", required=True, type=user_id)
    p.add_argument("--device", default="cli-1")
    p.add_argument("--platform", default="linux")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--region")
    p.add_argument(
        "--server",
        type=server_url,
        help="scheduler URL (default: $IMCTL_SERVER, else from --config)",
    )
    p.add_argument(
        "--config",
        help="config file to find the scheduler address and the development key in "
        "(default key: the packaged local.yaml's, as imctl up and imctl token)",
    )
    p.add_argument(
        "--token",
        help="client credential sent as Authorization: Bearer (default: minted for --uid "
        "from the config's development key)",
    )
    p.add_argument(
        "--cacert",
        default="",
        help="CA file to trust for an https:// scheduler and wss:// nodes (a private CA; "
        "default: the system's)",
    )
    p.add_argument(
        "--output",
        "-o",
        choices=["table", "json"],
        default="table",
        help="json: stdout holds only the node's frames, one JSON object a line",
    )
    p.set_defaults(func=cmd_connect)

    # Listed for `imctl --help`; entry.main hands `imctl load ...` over before parsing.
    sub.add_parser(
        "load",
        help="simulated clients against a running cluster, with a report (imctl load --help)",
        add_help=False,
    )

    p = sub.add_parser(
        "token",
        help="mint client tokens from the config's development key",
        description="Print a client token (a JWT whose sub is the uid, HS256 with the "
        "config's development key) for each --uid, one a line, in the order given. For "
        'GET /v1/endpoint: curl -H "Authorization: Bearer $(imctl token --uid alice)" ...',
    )
    p.add_argument("--uid", required=True, type=user_id, action="append", help="repeatable")
    p.add_argument(
        "--ttl", type=token_ttl, default=3600.0, help="lifetime (3600, 10m, 2h; default 1h)"
    )
    p.add_argument("--config", help="config file (default: the packaged local.yaml, as imctl up)")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "lb",
        help="HAProxy in front of the access nodes",
        description="Render HAProxy's configuration from the node registry, or keep it "
        "current and reload HAProxy when the nodes change.",
    )
    lsub = p.add_subparsers(dest="lb_command", metavar="ACTION", parser_class=_Parser)
    lsub.required = True
    r = lsub.add_parser(
        "render",
        help="write HAProxy's configuration once",
        description="Write the configuration for the nodes in the registry now (etcd; with "
        "the embedded backend, the registry of a running `imctl up` through its admin API).",
    )
    r.add_argument("--config", required=True, help="config file")
    r.add_argument("--output", metavar="PATH", help="file to write (default: stdout)")
    r.add_argument("--server", type=server_url, help="scheduler URL (embedded backend)")
    r.add_argument("--token", help="admin bearer token (default: $IMCTL_TOKEN)")
    r.add_argument("--cacert", default="", help="CA file for an https:// scheduler")
    r.set_defaults(func=cmd_lb_render)
    w = lsub.add_parser(
        "watch",
        help="keep HAProxy's configuration current and reload it",
        description="Follow the registry (etcd), rewrite edge.config_path when the nodes "
        "change and reload HAProxy through its master socket (edge.master_socket), at most "
        "every edge.reload_interval_s; with no master socket it starts and owns HAProxy.",
    )
    w.add_argument("--config", required=True, help="config file")
    w.set_defaults(func=cmd_lb_watch)

    p = sub.add_parser(
        "config", help="work with config files", description="Check configuration files."
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    c = csub.add_parser(
        "check",
        help="validate a config file, listing every problem",
        description="Validate FILE (with IMCTL_ overrides) and list every problem.",
    )
    c.add_argument("file", metavar="FILE")
    c.add_argument("--output", "-o", choices=["table", "json"], default="table")
    c.set_defaults(func=cmd_config_check)
    return parser
