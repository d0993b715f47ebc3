"""``imctl``: run the processes and operate a running cluster through its admin API."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# -- running processes ------------------------------------------------------------------------


async def _serve_scheduler(settings: Settings, banner: bool) -> int:
    from aiohttp import web

    from control.scheduler.service import STATE, create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = settings.scheduler.host, settings.scheduler.port
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"imctl: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    state = app[STATE]
    # Config, snapshot and routing tables live as long as the process: move them out of
    # the cyclic collector's way so its passes stay short on the request path.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, state.supervisor.stop.set)
    url = f"http://{host}:{port}"
    if banner:
        _print_banner(settings, url)
    else:
        logging.getLogger("imctl").info("scheduler listening on %s", url)
    if settings.admin.grants().open:
        logging.getLogger("imctl").warning(
            "admin API has no tokens: open to anyone who can reach %s (loopback only)", url
        )
    await state.supervisor.stop.wait()
    await runner.cleanup()
    if state.supervisor.failure:
        print(f"imctl: stopped: {state.supervisor.failure}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def _print_banner(settings: Settings, url: str) -> None:
    nodes = settings.registry.static_nodes
    regions = sorted({n.region for n in nodes})
    print(f'imctl local cluster "{settings.cluster.name}" is up')
    print(f"  backends:   {settings.cluster.backend} (registry, gray store)")
    print(f"  nodes:      {len(nodes)} listed in config, regions {', '.join(regions) or '-'}")
    print(f"  scheduler:  {url}")
    print("  ask for an endpoint:")
    print(f"    curl '{url}/v1/endpoint?uid=alice&device=phone-1&platform=ios&version=1.0.0'")
    print(f"  operate:    imctl nodes --server {url}")
    if settings.admin.grants().open:
        print("  admin API:  open, no token (loopback only)")
    print("Ctrl-C stops it.", flush=True)


def cmd_scheduler(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    _setup_logging(settings.log_level)
    return asyncio.run(_serve_scheduler(settings, banner=False))


def cmd_up(args: argparse.Namespace) -> int:
    path = args.config or str(_default_local_config())
    settings = _load(path)
    _setup_logging("warning" if settings.log_level == "info" else settings.log_level)
    return asyncio.run(_serve_scheduler(settings, banner=True))


# -- operating a cluster -----------------------------------------------------------------------


def _server(args: argparse.Namespace) -> str:
    if args.server:
        return str(args.server).rstrip("/")
    if os.environ.get("IMCTL_SERVER"):
        return os.environ["IMCTL_SERVER"].rstrip("/")
    settings = _load(args.config) if args.config else load_settings(None)
    host = settings.scheduler.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{settings.scheduler.port}"


async def _get_json(url: str, token: str | None) -> tuple[int, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = {"error": "bad_response", "message": (await resp.text())[:200]}
        return resp.status, body


def _admin_get(args: argparse.Namespace, path: str) -> Any:
    import aiohttp

    url = _server(args) + path
    token = args.token or os.environ.get("IMCTL_TOKEN")
    try:
        status, body = asyncio.run(_get_json(url, token))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise SystemExit(_fail(f"cannot reach {url}: {exc}", EXIT_UNAVAILABLE)) from None
    if status != 200:
        message = body.get("message", body) if isinstance(body, dict) else body
        raise SystemExit(_fail(f"{url}: HTTP {status}: {message}", EXIT_UNAVAILABLE))
    return body


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


def cmd_nodes(args: argparse.Namespace) -> int:
    body = _admin_get(args, "/v1/nodes")
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
    ]
    print(_table(rows, headers))
    held = " (self-preservation: holding last view)" if body.get("held") else ""
    print(
        f"\n{len(rows)} nodes in cluster {body['cluster']}{held}; "
        f"releases: {', '.join(body['releases']) or 'none'}"
    )
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    nodes = len(settings.registry.static_nodes)
    releases = len(settings.gray.releases)
    print(
        f"{args.file}: OK (cluster {settings.cluster.name}, backend {settings.cluster.backend}, "
        f"{len(settings.regions.known)} regions, {nodes} static nodes, {releases} releases)"
    )
    return 0


# -- parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(f"{self.prog}: {message}", EXIT_USAGE))


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
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "scheduler",
        help="run a scheduler",
        description="Serve GET /v1/endpoint and the operator endpoints.",
    )
    p.add_argument("--config", required=True, help="config file")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser(
        "nodes",
        help="list access nodes with their load",
        description="List the nodes a running scheduler sees, with load.",
    )
    p.add_argument("--server", help="scheduler URL (default: $IMCTL_SERVER, else from --config)")
    p.add_argument("--config", help="config file to find the scheduler address in")
    p.add_argument("--token", help="admin bearer token (default: $IMCTL_TOKEN)")
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_nodes)

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
