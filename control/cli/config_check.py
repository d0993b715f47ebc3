"""``imctl config check``: validate a config file, every problem at once."""

from __future__ import annotations

import argparse
import json
import sys

from control.cli.context import EXIT_USAGE
from control.common.errors import ConfigError
from control.settings import load_settings


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
