"""One imctl process: its listening parts (Part), and how it starts them, waits for a signal
or a failed background task, and stops them in order (Process, run_process)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from aiohttp import web

from control.access.node import AccessNode
from control.common.config import ConnectionSettings, TlsSettings
from control.common.errors import ImctlError
from control.common.guard import ConnectionGuard, GuardedSite, install_loop_handler
from control.common.ops import METRICS
from control.common.proxied import ProxiedSite, ProxyPolicy
from control.common.tasks import Supervisor
from control.common.tls import CertificateError, CertificateReloader, server_context

log = logging.getLogger("imctl")
EXIT_UNAVAILABLE = 1


@dataclass
class Part:
    """One listening application of the process."""

    name: str
    app: web.Application
    host: str
    port: int
    runner: web.AppRunner | None = None
    supervisor: Supervisor | None = None
    node: AccessNode | None = None
    # Asked to stop: turn unready, then keep serving this long (a load balancer's turn).
    leave: Callable[[], None] | None = None
    grace_s: float = 0.0
    # Stop following the registry: in one process with the access nodes (imctl up), their
    # leaving is this process's own shutdown, not a mass loss to hold a view through.
    unwatch: Callable[[], Awaitable[None]] | None = None
    # The ring follower of the presence cluster this part owns (or of imctl up's shared one).
    ring: Supervisor | None = None
    # A second listener for the load balancer (PROXY v2 first on every connection).
    proxy_port: int = 0
    proxy: ProxyPolicy | None = None
    # Its certificate (HTTPS/WSS), loaded at start and reloaded in place when renewed.
    tls: TlsSettings = field(default_factory=TlsSettings)
    reloader: CertificateReloader | None = None

    def supervisors(self) -> list[Supervisor]:
        return [s for s in (self.supervisor, self.ring) if s is not None]


@dataclass
class Process:
    """The parts one imctl process serves, under one connection guard: start, wait, close."""

    parts: list[Part] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    guard: ConnectionGuard | None = None
    _unguard: Callable[[], None] | None = None

    async def start(self) -> str | None:
        """Bind every part; returns an error message instead of raising."""
        # One guard for the process: its caps count every part's connections.
        guard = self.guard = ConnectionGuard(self.connections.limits())
        self._unguard = install_loop_handler(asyncio.get_running_loop(), guard)
        for part in self.parts:
            runner = web.AppRunner(
                part.app, access_log=None, handle_signals=False, shutdown_timeout=5.0
            )
            try:
                await runner.setup()  # opens the part's backends
            except ImctlError as exc:  # etcd or Redis unreachable, say: fail fast and clearly
                await runner.cleanup()
                return f"cannot start {part.name}: {exc}"
            part.runner = runner
            if METRICS in part.app:
                guard.register(part.app[METRICS])
            try:
                context = self._tls(part)
            except CertificateError as exc:  # replaced or gone since the config was checked
                return f"cannot start {part.name}: {exc}"
            site = GuardedSite(runner, guard, part.host, part.port, backlog=4096, ssl=context)
            try:
                await site.start()
            except OSError as exc:
                return f"cannot listen on {part.host}:{part.port} for {part.name}: {exc.strerror}"
            if part.proxy is not None and part.proxy_port:
                # TLS passthrough: the balancer relays the client's TLS, which starts after
                # the PROXY header, with the same (reloaded in place) context; a balancer
                # that terminates TLS relays plain bytes.
                policy = replace(part.proxy, ssl=context if part.proxy.passthrough else None)
                relayed = ProxiedSite(runner, guard, part.host, part.proxy_port, policy)
                try:
                    await relayed.start()
                except OSError as exc:
                    return (
                        f"cannot listen on {part.host}:{part.proxy_port} for {part.name}'s "
                        f"load balancer: {exc.strerror}"
                    )
        return None

    @staticmethod
    def _tls(part: Part) -> ssl.SSLContext | None:
        """The part's server context, its reloader a supervised task (``tls-reload``)."""
        tls = part.tls
        if not tls.enabled:
            return None
        context, _ = server_context(tls.cert, tls.key)
        part.reloader = CertificateReloader(
            context, tls.cert, tls.key, tls.reload_s, name=part.name
        )
        if METRICS in part.app:
            part.reloader.register(part.app[METRICS])
        if part.supervisor is not None:
            part.supervisor.spawn("tls-reload", part.reloader.run)
        return context

    def failures(self) -> list[str]:
        return [f"{p.name}: {s.failure}" for p in self.parts for s in p.supervisors() if s.failure]

    async def wait(self) -> None:
        """Until SIGINT/SIGTERM or until a part's background task dies."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        waiters = [asyncio.ensure_future(self.stop.wait())]
        waiters += [
            asyncio.ensure_future(s.failed.wait()) for p in self.parts for s in p.supervisors()
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()

    async def close(self, drain_s: float, graceful: bool = True) -> None:
        """Access nodes drain and schedulers sit out their grace first (both still
        serving), then everything stops. Not graceful (a part failed): no grace."""
        for part in self.parts:
            if part.leave is not None:
                part.leave()
        grace = max((p.grace_s for p in self.parts), default=0.0) if graceful else 0.0
        if grace:
            log.warning("stopping in %gs: /readyz answers 503 meanwhile", grace)
        nodes = [p.node for p in self.parts if p.node is not None]
        if nodes:
            # Before the nodes revoke their leases: a scheduler or controller that watched
            # them go would log "self-preservation: 3/3 nodes vanished at once" (and the
            # controller would evict them). Nothing here needs the registry any more.
            await asyncio.gather(*(p.unwatch() for p in self.parts if p.unwatch is not None))
        await asyncio.gather(asyncio.sleep(grace), *(n.stop(drain_s) for n in nodes))
        for part in reversed(self.parts):
            if part.runner is not None:
                await part.runner.cleanup()
        if self._unguard is not None:  # the loop may outlive the process (tests, imctl up)
            self._unguard()
            self._unguard = None


async def run_process(process: Process, banner: str | None, drain_s: float) -> int:
    """Start ``process``, print its banner, serve until a signal or a failure, close it;
    the exit code."""
    error = await process.start()
    if error is not None:
        await process.close(0, graceful=False)
        print(f"imctl: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    # Config, tables and snapshots live as long as the process: keep them out of the
    # cyclic collector's passes on the request path.
    gc.collect()
    gc.freeze()
    if banner:
        print(banner, flush=True)
    await process.wait()
    failures = process.failures()
    await process.close(0 if failures else drain_s, graceful=not failures)
    if failures:
        print(f"imctl: stopped: {'; '.join(failures)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0
