"""``imctl lb watch``: keep HAProxy's configuration the rendering of the registry, and
reload HAProxy when it changes, at most once per ``reload_interval_s`` (changes in between
are rendered together). A rendering HAProxy's own check refuses is logged and not loaded."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.registry import NodeRecord, Registry
from control.common.tasks import Supervisor
from control.edge.config import EdgeConfig
from control.edge.haproxy import MasterSocket, check_config
from control.edge.render import EdgeView, Rendering, render

log = logging.getLogger("imctl.edge")


class EdgeWatch:
    """The registry's node records -> the file at ``edge.config_path`` -> a reload."""

    def __init__(
        self,
        config: EdgeConfig,
        kv: KeyValueStore,
        master: MasterSocket,
        clock: Callable[[], float] = time.monotonic,
        verify_s: float = 10.0,
    ) -> None:
        self.config = config
        self.master = master
        self.clock = clock
        self.path = Path(config.edge.config_path)
        self.view = EdgeView(())
        self.changed = asyncio.Event()
        self.mirror: PrefixMirror[NodeRecord] = Registry(kv, config.prefix).mirror(
            self.on_nodes, verify_s=verify_s
        )
        self.loaded: str | None = self._on_disk()  # what HAProxy runs on
        self.last_reload = -float("inf")
        self.reloads = 0
        self.refused = 0
        self.last: Rendering | None = None
        self.supervisor = Supervisor("edge")

    def _on_disk(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def on_nodes(self, nodes: Mapping[str, NodeRecord]) -> None:
        self.view = EdgeView.of(nodes.values())
        self.changed.set()

    def wait_s(self) -> float:
        """How long until a reload is allowed again (0: now)."""
        return max(0.0, self.last_reload + self.config.edge.reload_interval_s - self.clock())

    async def run_once(self) -> str:
        """Render the current view; write it and reload HAProxy when it differs from what
        HAProxy runs and the interval allows. Returns what it did, in a sentence."""
        rendering = render(self.view, self.config)
        self.last = rendering
        if rendering.text == self.loaded:
            return f"unchanged: {rendering.summary()}"
        held = self.wait_s()
        if held > 0:
            every = self.config.edge.reload_interval_s
            return f"change held {held:.1f}s (reloads at most every {every:g}s)"
        staged = self.path.with_name(self.path.name + ".new")
        await asyncio.to_thread(staged.write_text, rendering.text)
        problem = await check_config(self.config.edge.haproxy, staged)
        if problem is not None:
            self.refused += 1
            self.loaded = rendering.text  # not retried until the registry changes again
            return f"HAProxy refused the rendering (kept the old one): {problem}"
        os.replace(staged, self.path)
        self.last_reload = self.clock()
        await self.master.reload()
        self.loaded = rendering.text
        self.reloads += 1
        return f"reloaded: {rendering.summary()}"

    async def run(self, stop: asyncio.Event) -> None:
        await self.mirror.synced.wait()
        said = ""
        while not stop.is_set():
            self.changed.clear()
            try:
                sentence = await self.run_once()
            except BackendUnavailable as exc:
                sentence = f"reload failed, retrying: {exc}"
                self.loaded = None  # try again
                self.last_reload = self.clock()
            if sentence != said:
                log.warning("edge: %s", sentence)
                said = sentence
            pending = self.last is not None and self.last.text != self.loaded
            timeout = self.wait_s() if pending else None
            waits = {asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def start(self) -> None:
        self.supervisor.spawn("registry", self.mirror.run)
        self.supervisor.spawn("reload", self.run)

    async def close(self) -> None:
        await self.supervisor.close(timeout=3.0)
