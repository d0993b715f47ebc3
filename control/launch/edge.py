"""The load balancer's side of launch: the edge config from Settings, one reading of the
registry (``imctl lb render``), and ``imctl lb watch`` (the registry followed, HAProxy
reloaded; started and owned by it when no master socket is given)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from control.common.errors import BackendUnavailable, ImctlError
from control.common.kv import KeyValueStore
from control.common.registry import Registry
from control.edge.config import EdgeConfig
from control.edge.haproxy import MasterSocket, check_config, start_master
from control.edge.render import EdgeView, render
from control.edge.watch import EdgeWatch
from control.settings import Settings

log = logging.getLogger("imctl.edge")
EXIT_UNAVAILABLE = 1


def edge_config(settings: Settings) -> EdgeConfig:
    hb = settings.heartbeat
    return EdgeConfig(
        settings.edge,
        settings.cluster.prefix,
        # The node closes a silent client at the heartbeat timeout; HAProxy only after.
        idle_timeout_s=hb.timeout_s + hb.interval_s,
        connect_timeout_s=settings.connections.idle_timeout_s,
    )


async def registry_view(kv: KeyValueStore, prefix: str) -> EdgeView:
    """Every node record in the registry now."""
    nodes, _ = await Registry(kv, prefix).list()
    return EdgeView.of(nodes.values())


async def read_registry(settings: Settings) -> EdgeView:
    from control.launch import make_kv

    kv = make_kv(settings.cluster)
    await kv.connect()
    try:
        return await registry_view(kv, settings.cluster.prefix)
    finally:
        await kv.close()


def master_socket_path(settings: Settings) -> Path:
    """Where an HAProxy that ``imctl lb watch`` owns has its master CLI."""
    if settings.edge.master_socket:
        return Path(settings.edge.master_socket)
    path = Path(settings.edge.config_path)
    return path.with_name(path.name + ".sock")


async def run_lb_watch(settings: Settings) -> int:
    if settings.cluster.backend != "etcd":
        print(
            "imctl: lb watch follows the registry in etcd (cluster.backend: etcd); the "
            "embedded registry lives inside `imctl up` and is read through its admin API "
            "by `imctl lb render`",
            file=sys.stderr,
        )
        return 2
    from control.launch import make_kv

    config = edge_config(settings)
    kv = make_kv(settings.cluster)
    haproxy: asyncio.subprocess.Process | None = None
    try:
        await kv.connect()
        socket = master_socket_path(settings)
        if not settings.edge.master_socket:  # ours: start it on the registry as it is now
            path = Path(settings.edge.config_path)
            text = render(await registry_view(kv, config.prefix), config).text
            await asyncio.to_thread(path.write_text, text)
            problem = await check_config(settings.edge.haproxy, path)
            if problem is not None:
                print(f"imctl: HAProxy refuses {path}: {problem}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            haproxy = await start_master(settings.edge.haproxy, path, socket)
            master = MasterSocket(str(socket))
            for _ in range(100):  # its socket within 5 s
                try:
                    await master.processes()
                    break
                except BackendUnavailable:
                    await asyncio.sleep(0.05)
        watch = EdgeWatch(
            config, kv, MasterSocket(str(socket)), verify_s=settings.registry.verify_s
        )
        watch.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"imctl lb: {settings.edge.config_path}, HAProxy master socket {socket}", flush=True)
        done = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(watch.supervisor.failed.wait()),
        ]
        await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
        for d in done:
            d.cancel()
        await watch.close()
        if watch.supervisor.failure:
            print(f"imctl: stopped: {watch.supervisor.failure}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        return 0
    except ImctlError as exc:
        print(f"imctl: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if haproxy is not None and haproxy.returncode is None:
            haproxy.send_signal(signal.SIGUSR1)  # soft stop: connections finish first
            try:
                await asyncio.wait_for(haproxy.wait(), 10)
            except TimeoutError:
                haproxy.kill()
                await haproxy.wait()
        await kv.close()
