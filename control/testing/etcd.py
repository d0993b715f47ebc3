"""A real etcd member on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
from pathlib import Path

from control.testing.ports import free_port, wait_port
from control.testing.servers import ServerProcess, require_binary
from control.testing.waits import until_sync


class EtcdServer(ServerProcess):
    """One etcd member; ``restart()`` keeps its data dir and port."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = require_binary("etcd", "etcd-server")
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"etcd-{self.port}.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name",
            "t",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"t={peer}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "error",
        ]
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self._spawn(cmd, self.log, env)
        wait_port(self.port)
        self.wait_healthy()

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            return b'"true"' in resp.read()
        return False

    def wait_healthy(self, timeout: float = 15.0) -> None:
        try:
            until_sync(self.healthy, timeout, "etcd healthy")
        except AssertionError as err:
            raise TimeoutError(f"etcd did not become healthy: {err}") from None
