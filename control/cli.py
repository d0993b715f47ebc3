"""``imctl``: run the processes and operate a running cluster through its admin API."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from control.common.errors import ConfigError
from control.settings import Settings, load_settings

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1


def _default_local_config() -> Path:
    return Path(str(resources.files("control") / "data" / "local.yaml"))


def _load(path: str | None) -> Settings:
    return load_settings(path)


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line (time in UTC, level, logger, message, exception), so a log
    shipper needs no parsing rules and a multi-line message stays one record."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _setup_logging(level: str, form: str = "text") -> None:
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


# -- running processes ------------------------------------------------------------------------


def cmd_scheduler(args: argparse.Namespace) -> int:
    from control.launch import run_scheduler

    settings = _load(args.config)
    _setup_logging(settings.log_level, _log_format(args, settings))
    return asyncio.run(run_scheduler(settings))


def cmd_access(args: argparse.Namespace) -> int:
    if args.access_command is not None:
        return int(args.access_func(args))
    if not args.config or not args.node_id:
        raise SystemExit(
            _fail(
                "access: give --config FILE --node-id ID to run a node, or 'drain'/'undrain' NODE",
                EXIT_USAGE,
            )
        )
    from control.launch import run_access

    settings = _load(args.config)
    settings.access.node(args.node_id)  # a clear error before anything starts
    _setup_logging(settings.log_level, _log_format(args, settings))
    return asyncio.run(run_access(settings, args.node_id))


def cmd_controller(args: argparse.Namespace) -> int:
    from control.launch import run_controller

    settings = _load(args.config)
    _setup_logging(settings.log_level, _log_format(args, settings))
    return asyncio.run(run_controller(settings))


def cmd_up(args: argparse.Namespace) -> int:
    from control.launch import run_local

    path = args.config or str(_default_local_config())
    settings = _load(path)
    level = "warning" if settings.log_level == "info" else settings.log_level
    _setup_logging(level, _log_format(args, settings))
    config_path = None if args.config is None else path
    return asyncio.run(run_local(settings, args.output == "json", config_path))


# -- operating a cluster -----------------------------------------------------------------------


def _server(args: argparse.Namespace) -> str:
    if args.server:
        return str(args.server)
    if os.environ.get("IMCTL_SERVER"):
        try:
            return server_url(os.environ["IMCTL_SERVER"])
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(_fail(f"IMCTL_SERVER: {exc}", EXIT_USAGE)) from None
    settings = _load(args.config) if args.config else load_settings(None)
    host = settings.scheduler.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{settings.scheduler.port}"


async def _request(method: str, url: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, headers=headers, json=body) as resp,
    ):
        try:
            data = await resp.json(content_type=None)
        except (ValueError, RecursionError):
            data = {"error": "bad_response", "message": (await resp.text())[:200]}
        return resp.status, data


def _admin(args: argparse.Namespace, path: str, method: str = "GET", body: Any = None) -> Any:
    """Call the cluster's admin API; failures become one clear line and exit 1."""
    import aiohttp

    url = _server(args) + path
    token = args.token or os.environ.get("IMCTL_TOKEN")
    try:
        status, data = asyncio.run(_request(method, url, token, body))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise SystemExit(_fail(f"cannot reach {url}: {exc}", EXIT_UNAVAILABLE)) from None
    if status != 200:
        message = data.get("message", data) if isinstance(data, dict) else data
        raise SystemExit(_fail(f"{url}: HTTP {status}: {message}", EXIT_UNAVAILABLE))
    return data


def _answer_shape(verb: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An operator verb reads the admin API's answer; one of another shape (``--server``
    pointing at something else) is one clear line, not a traceback."""

    @functools.wraps(verb)
    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise SystemExit(
                _fail(
                    f"unexpected answer from {_server(args)} ({exc!r}): is it an imctl scheduler?",
                    EXIT_UNAVAILABLE,
                )
            ) from None

    return run


def _admin_get(args: argparse.Namespace, path: str) -> Any:
    return _admin(args, path)


def server_url(text: str) -> str:
    """A scheduler base URL: http(s)://host[:port][/path]."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a scheduler URL like http://127.0.0.1:8080"
        )
    return text.strip().rstrip("/")


def user_id(text: str) -> str:
    from control.scheduler.request import UID_RE

    if not UID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a uid (1-128 of letters, digits and _.:@+=-)"
        )
    return text


def positive_count(text: str) -> int:
    from control.scheduler.request import EVENTS_COUNT_MAX, event_count

    count = event_count(text)
    if count is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from 1 to {EVENTS_COUNT_MAX}"
        )
    return count


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``500ms``, ``1h`` as seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 60s, 2m or 500ms")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)
    return 0


@_answer_shape
def cmd_drain(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    data = _admin(
        args, f"/v1/nodes/{quote(args.node, safe='')}/drain", "POST", {"over_s": args.over}
    )
    return _print(
        args, data, f"{args.node}: draining over {args.over:g}s (requested by {data.get('by')})"
    )


@_answer_shape
def cmd_undrain(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    data = _admin(args, f"/v1/nodes/{quote(args.node, safe='')}/drain", "DELETE")
    was = "was draining" if data.get("was_draining") else "was not draining"
    return _print(args, data, f"{args.node}: taking clients again ({was})")


@_answer_shape
def cmd_presence_who(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    if len(args.uid) > 1:
        return _presence_lookup(args)
    (uid,) = args.uid
    data = _admin(args, f"/v1/presence/{quote(uid, safe='')}")
    if not data["devices"]:
        return _print(args, data, f"{uid}: offline")
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
    return _print(args, data, _table(rows, headers))


def _presence_lookup(args: argparse.Namespace) -> int:
    """Several users in one batch lookup (no last seen: that costs a read per user)."""
    data = _admin(args, "/v1/presence/lookup", "POST", {"uids": args.uid})
    rows = [
        [uid, d["device"], d["node"], d["conn"], d["status"], d["region"] or "-"]
        for uid, devices in data["online"].items()
        for d in devices
    ]
    offline = data["offline"]
    lines = (
        [_table(rows, ["UID", "DEVICE", "NODE", "CONN", "STATUS", "REGION"]), ""] if rows else []
    )
    lines.append(
        f"{len(data['online'])} of {len(data['online']) + len(offline)} online"
        + (f"; offline: {', '.join(offline)}" if offline else "")
    )
    return _print(args, data, "\n".join(lines))


@_answer_shape
def cmd_presence_count(args: argparse.Namespace) -> int:
    path = "/v1/presence/count" + (f"?by={args.by}" if args.by else "")
    data = _admin(args, path)
    if not args.by:
        return _print(args, data, f"{data['total']} online")
    # An empty name (clients that named no ?platform=) shows as (none), never a blank row.
    rows = [[k or "(none)", str(v)] for k, v in data["counts"].items()]
    text = _table(rows, [args.by.upper(), "ONLINE"]) + f"\n\n{data['total']} online in all"
    return _print(args, data, text)


@_answer_shape
def cmd_explain(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    params = {"uid": args.uid, "device": args.device, "platform": args.platform}
    params["version"] = args.version
    params |= {k: v for k, v in (("region", args.region), ("ip", args.ip)) if v}
    data = _admin(args, "/v1/explain?" + urlencode(params))
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
        _table(rows, ["RELEASE", "STATE", "OUTCOME", "BUCKET", "CUTOFF", ""])
        if rows
        else "no releases",
        "",
        f"regions in preference order: {', '.join(data['ranking']) or '-'}",
        _table(
            [[r["region"], str(r["nodes"]), str(r["with_room"])] for r in data["regions"]],
            ["REGION", "NODES", "WITH ROOM"],
        ),
        "",
        f"would connect in: {data['would_connect_in'] or 'nowhere (503 no_capacity)'}",
    ]
    return _print(args, data, "\n".join(lines))


async def _tail(url: str, token: str | None, output: str, count: int | None) -> int:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No total timeout: a tail runs until the count is reached or Ctrl-C.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    seen = 0
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        if resp.status != 200:
            try:
                message = (await resp.json(content_type=None)).get("message")
            except (ValueError, RecursionError, AttributeError):
                message = (await resp.text())[:200]
            return _fail(f"{url}: HTTP {resp.status}: {message}", EXIT_UNAVAILABLE)
        print(f"# following presence events at {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        async for line in resp.content:
            if not line.strip():
                continue  # keepalive
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):
                return _fail(f"{url}: not a presence event: {line[:80]!r}", EXIT_UNAVAILABLE)
            seen += 1
            if output == "json":
                print(json.dumps(event, ensure_ascii=False), flush=True)
                continue
            at = float(event["at"])
            stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
            fields = [event["kind"].ljust(7), event["uid"], event["device"], event["node"]]
            fields += [event["conn"], event.get("reason") or ""]
            print(stamp, *fields, flush=True)
    if count is not None and seen >= count:
        return 0
    # A tail has no end of its own: the scheduler stopped (or restarted). Scripts see it.
    return _fail(f"{url}: the scheduler ended the stream after {seen} event(s)", EXIT_UNAVAILABLE)


@_answer_shape
def cmd_presence_events(args: argparse.Namespace) -> int:
    import aiohttp

    query = {k: v for k, v in (("uid", args.uid), ("count", args.count)) if v is not None}
    url = _server(args) + "/v1/presence/events"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    token = args.token or os.environ.get("IMCTL_TOKEN")
    try:
        return asyncio.run(_tail(url, token, args.output, args.count))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return _fail(f"cannot reach {url}: {exc}", EXIT_UNAVAILABLE)


def _fail(message: str, code: int) -> int:
    print(f"imctl: {message}", file=sys.stderr)
    return code


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


@_answer_shape
def cmd_nodes(args: argparse.Namespace) -> int:
    body = _admin_get(args, "/v1/nodes")
    now = time.time()
    if args.output == "json":
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
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
    headers = [
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
    print(_table(rows, headers))
    held = " (self-preservation: holding last view)" if body.get("held") else ""
    print(
        f"\n{len(rows)} nodes in cluster {body['cluster']}{held}; "
        f"releases: {', '.join(body['releases']) or 'none'}"
    )
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    from control.client import run

    token: Callable[[], str | None]
    if args.token:
        given = str(args.token)
        token = lambda: given  # noqa: E731
    else:
        # A fresh token for every ask, so a client that runs for days never presents an
        # expired one; trust mode needs none.
        minter, settings, _ = _token_minter(args.config)
        trusting = settings.client_auth.mode == "trust"
        token = lambda: None if trusting else minter(args.uid, 3600)  # noqa: E731
    try:
        return asyncio.run(
            run(
                _server(args),
                args.uid,
                args.device,
                args.platform,
                args.version,
                args.region,
                output=args.output,
                token=token,
            )
        )
    except OSError as exc:  # failures the client does not retry (it retries the network's)
        return _fail(f"cannot connect: {exc}", EXIT_UNAVAILABLE)


TOKEN_TTL_MAX_S = 366 * 86400


def token_ttl(text: str) -> float:
    ttl = parse_duration(text)
    if not 1 <= ttl <= TOKEN_TTL_MAX_S:
        raise argparse.ArgumentTypeError(f"{text!r}: a lifetime from 1s to 366 days")
    return ttl


def _token_minter(config: str | None) -> tuple[Callable[[str, float], str], Settings, str]:
    """A function minting client tokens from ``config``'s development key (default: the
    config ``imctl up`` runs); SystemExit with one clear line when it has none."""
    from control.common.client_auth import mint

    path = config or str(_default_local_config())
    settings = _load(path)
    auth = settings.client_auth
    if auth.mode == "callback":
        raise SystemExit(
            _fail(
                f"{path}: client_auth.mode is callback: tokens come from the app's auth "
                f"service ({auth.callback.url}), not from imctl",
                EXIT_USAGE,
            )
        )
    key = auth.minting_key()
    if key is None:
        raise SystemExit(
            _fail(
                f"{path}: client_auth.keys has no HS256 secret to sign tokens with (tokens "
                "for RS256/ES256 or JWKS keys come from the app's backend)",
                EXIT_USAGE,
            )
        )
    kid, secret = key

    def minter(uid: str, ttl: float) -> str:
        return mint(uid, secret, kid, ttl, audience=auth.audience, issuer=auth.issuer)

    return minter, settings, path


def cmd_token(args: argparse.Namespace) -> int:
    minter, settings, path = _token_minter(args.config)
    if settings.client_auth.mode == "trust":
        print(
            f"imctl: note: {path} has client_auth.mode trust; the scheduler ignores tokens",
            file=sys.stderr,
        )
    for uid in args.uid:
        print(minter(uid, args.ttl))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        if args.output == "json":
            print(json.dumps({"file": args.file, "ok": False, "problems": exc.problems}, indent=2))
            return EXIT_USAGE
        print(f"{args.file}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    summary = {
        "cluster": settings.cluster.name,
        "backend": settings.cluster.backend,
        "regions": len(settings.regions.known),
        "static_nodes": len(settings.registry.static_nodes),
        "releases": len(settings.gray.releases),
    }
    if args.output == "json":
        print(json.dumps({"file": args.file, "ok": True, "problems": [], **summary}, indent=2))
        return 0
    print(
        f"{args.file}: OK (cluster {summary['cluster']}, backend {summary['backend']}, "
        f"{summary['regions']} regions, {summary['static_nodes']} static nodes, "
        f"{summary['releases']} releases)"
    )
    return 0


# -- parser --------------------------------------------------------------------------------------


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


def _log_format(args: argparse.Namespace, settings: Settings) -> str:
    return "json" if getattr(args, "output", "table") == "json" else settings.log_format


def _admin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        type=server_url,
        help="scheduler URL (default: $IMCTL_SERVER, else from --config)",
    )
    p.add_argument("--config", help="config file to find the scheduler address in")
    p.add_argument("--token", help="admin bearer token (default: $IMCTL_TOKEN)")
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")


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

    p = sub.add_parser(
        "controller",
        help="run the presence controller",
        description="Leader-elected expiry sweep and dead-node cleanup.",
    )
    p.add_argument("--config", required=True, help="config file")
    _run_args(p)
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser(
        "presence", help="who is online", description="Look up users and count who is online."
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
        "--output",
        "-o",
        choices=["table", "json"],
        default="table",
        help="json: stdout holds only the node's frames, one JSON object a line",
    )
    p.set_defaults(func=cmd_connect)

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print("imctl: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
