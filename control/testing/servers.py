"""What every real server binary in the kit shares: finding the binary, start, stop, kill,
freeze and thaw."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from control.testing.processes import kill_process, stop_process


class ServerProcess:
    """A real server binary on loopback; ``kill`` is kill -9, ``stop`` is a clean stop,
    ``freeze``/``thaw`` are SIGSTOP/SIGCONT."""

    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        if self.proc is not None:
            kill_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.thaw()  # a stopped process cannot act on SIGTERM
            stop_process(self.proc)
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None, "not running"
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, cmd: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)


def require_binary(name: str, package: str) -> str:
    """The path of the binary ``name``; RuntimeError naming the Debian ``package`` if absent."""
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} not found: install Debian's {package} (scripts/test.sh does)")
    return binary
