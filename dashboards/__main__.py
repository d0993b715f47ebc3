"""``python -m dashboards [--check] [--out DIR]``: build the dashboards' JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.build import OUT, stale, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imctl-dashboards", description="Build imctl's Grafana dashboards as JSON."
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        found = stale(args.out)
        for path in found:
            print(f"stale: {path} (run python -m dashboards)", file=sys.stderr)
        return 1 if found else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
