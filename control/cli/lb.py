"""``imctl lb render|watch``: HAProxy in front of the access nodes (built by control.edge,
run through control.launch)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from control.cli.admin_client import AdminError
from control.cli.context import EXIT_UNAVAILABLE, EXIT_USAGE, admin, fail, load
from control.common.errors import ImctlError
from control.common.logs import setup_logging
from control.common.registry import NodeRecord
from control.edge.render import EdgeView, render


def _admin_view(args: argparse.Namespace) -> EdgeView:
    """The scheduler's view of the registry (the embedded one lives inside `imctl up`)."""
    body = admin(args).nodes()
    records = []
    for row in body.get("nodes", []):
        fields = {k: v for k, v in row.items() if k in NodeRecord.__dataclass_fields__}
        import json

        try:
            records.append(NodeRecord.from_json(json.dumps(fields).encode()))
        except ValueError as exc:
            print(f"imctl: skipped a node the scheduler listed: {exc}", file=sys.stderr)
    return EdgeView.of(records)


def cmd_lb_render(args: argparse.Namespace) -> int:
    from control.launch.edge import edge_config, read_registry

    settings = load(args.config)
    try:
        if settings.cluster.backend == "etcd":
            view = asyncio.run(read_registry(settings))
        else:
            args.server = getattr(args, "server", None)
            args.token = getattr(args, "token", None)
            args.cacert = getattr(args, "cacert", "")
            view = _admin_view(args)
    except (ImctlError, AdminError) as exc:
        return fail(str(exc), EXIT_UNAVAILABLE)
    rendering = render(view, edge_config(settings))
    if args.output in (None, "-"):
        sys.stdout.write(rendering.text)
    else:
        try:
            Path(args.output).write_text(rendering.text)
        except OSError as exc:
            return fail(f"cannot write {args.output}: {exc.strerror}", EXIT_USAGE)
    print(f"imctl lb: {rendering.summary()}", file=sys.stderr)
    return 0


def cmd_lb_watch(args: argparse.Namespace) -> int:
    from control.launch.edge import run_lb_watch

    settings = load(args.config)
    setup_logging(settings.log_level, settings.log_format)
    return asyncio.run(run_lb_watch(settings))
