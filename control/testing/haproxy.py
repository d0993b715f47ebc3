"""A real HAProxy in master-worker mode, with its master CLI on a UNIX socket."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from pathlib import Path

from control.testing.processes import log_tail, stop_process
from control.testing.servers import ServerProcess, require_binary
from control.testing.waits import until_sync


class HaproxyServer(ServerProcess):
    """Debian's HAProxy in master-worker mode (``-W``) with its master CLI on a UNIX socket
    in ``data_dir``, started on ``config`` (a file with no listener yet is fine: the reloads
    that ``imctl lb watch`` makes add them). ``show_proc()`` is the master's process list."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = require_binary("haproxy", "haproxy")
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config = data_dir / "haproxy.cfg"
        self.socket = data_dir / "master.sock"
        self.log = data_dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self.config.exists():
            self.config.write_text(
                "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 2s\n"
                "    timeout client 60s\n    timeout server 60s\n"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        cmd = [self.binary, "-W", "-S", f"{self.socket},mode,600", "-f", str(self.config)]
        self._spawn(cmd, self.log)
        try:
            until_sync(lambda: "worker" in self.show_proc(), 15.0, "haproxy master and worker")
        except AssertionError as err:
            raise TimeoutError(f"{err}\n{log_tail(self.log)}") from None

    def show_proc(self) -> str:
        """The master CLI's ``show proc``; "" while it does not answer."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"show proc\n")
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: the master waits for workers
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
        self.proc = None
