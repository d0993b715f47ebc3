"""A real Prometheus scraping imctl's metrics on loopback."""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from control.testing.ports import free_port, wait_port
from control.testing.servers import ServerProcess, require_binary
from control.testing.waits import until_sync


class PrometheusServer(ServerProcess):
    """One Prometheus (Debian's ``prometheus``) scraping ``targets`` (``host:port`` on
    loopback, each with ``/metrics``) every ``every_s``; its TSDB in ``data_dir``.
    ``restart()`` keeps its port, data and targets. Its first scrape comes ~5 s after the
    start (Prometheus throttles target updates to one per 5 s)."""

    def __init__(
        self,
        data_dir: Path,
        targets: Iterable[str] = (),
        every_s: float = 0.5,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.binary = require_binary("prometheus", "prometheus")
        #: a whole Prometheus config to run instead of one job over ``targets`` (its
        #: relative paths, such as rule_files, are read from ``data_dir``)
        self.custom = config
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.targets, self.every_s = list(targets), every_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "prometheus.log"
        self.config = data_dir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        every = f"{max(1, round(self.every_s * 1000))}ms"
        scrape = {"job_name": "imctl", "static_configs": [{"targets": self.targets}]}
        config: dict[str, Any] = {"global": {"scrape_interval": every, "scrape_timeout": every}}
        config = dict(self.custom) if self.custom else {**config, "scrape_configs": [scrape]}
        self.config.write_text(yaml.safe_dump(config))
        tsdb, listen = self.data_dir / "tsdb", f"127.0.0.1:{self.port}"
        cmd = [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={tsdb}"]
        self._spawn([*cmd, f"--web.listen-address={listen}", "--log.level=warn"], self.log)
        wait_port(self.port, 30.0)
        try:
            until_sync(self.ready, 30.0, "prometheus ready")
        except AssertionError as err:
            raise TimeoutError(f"prometheus did not become ready: {err}") from None

    def ready(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp,
        ):
            return resp.status == 200
        return False
