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


def bar(done: float, total: float, width: int = 30) -> str:
    """``[#####.....]  50%``: the share of ``total`` done (0% when there is no total)."""
    share = min(1.0, max(0.0, done / total)) if total > 0 else 0.0
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share * 100:3.0f}%"


def duration(seconds: float | None) -> str:
    """A duration for people: 45s, 3m05s, 2h07m; "-" when unknown."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
