"""How answers are shown: aligned tables for people, ``--output json`` for scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Columns as wide as their widest cell, two spaces apart, headers first."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def show(args: argparse.Namespace, data: Any, text: str) -> int:
    """``data`` as indented JSON under ``--output json``, else ``text``; exit code 0."""
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)
    return 0
