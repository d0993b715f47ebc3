"""imctl and other child processes: spawn imctl from the source tree, run it to completion,
stop or kill a child, read what its log says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IMCTL = [sys.executable, "-m", "control.cli"]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_processes(procs: Iterable[subprocess.Popen[Any]], timeout: float = 15.0) -> None:
    """SIGTERM to all at once (so they stop in parallel), then wait for each."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stop_process(proc, timeout)


def kill_process(proc: subprocess.Popen[Any]) -> None:
    """kill -9, and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def spawn_imctl(
    args: list[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    text: bool = False,
    **popen: Any,
) -> subprocess.Popen[Any]:
    """``imctl <args>`` as a child process from the source tree, unbuffered. Its output goes
    to ``log`` (appended) when given, else wherever ``popen`` says (stdout=PIPE...)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if log is None:
        return subprocess.Popen([*IMCTL, *args], cwd=ROOT, env=full_env, text=text, **popen)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*IMCTL, *args], stdout=out, stderr=out, cwd=ROOT, env=full_env, **popen
        )


def run_imctl(
    args: list[str], timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``imctl <args>`` to completion, its output captured as text."""
    return subprocess.run(
        [*IMCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **env} if env is not None else None,
    )


def logged(log: Path, text: str) -> bool:
    """Whether a process's log file says ``text`` (a missing log says nothing)."""
    try:
        return text in log.read_text(errors="replace")
    except FileNotFoundError:
        return False


def log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of a log, for a failure message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({log} missing)"
