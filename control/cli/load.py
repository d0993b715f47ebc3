"""``imctl load``: a thin hand-over to the load generator (``python -m load.gen``, the
``load`` package, which sits above the CLI: it reuses the CLI's admin client, token minter
and reference-client pieces, so the CLI may not import it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def hand_over(argv: Sequence[str]) -> int:
    """Run the generator with ``argv``; its exit code. Ctrl-C reaches both processes: the
    generator winds its workers down, and this one waits for it."""
    proc = subprocess.Popen([sys.executable, "-m", "load.gen", *argv])
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.wait()
