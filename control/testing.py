"""The public test kit: real servers and imctl processes on free loopback ports with their own
temp dirs, and one way to wait for an event. Used by tests/ (through thin pytest fixtures in
tests/conftest.py) and by the load/ benchmarks alike; it imports nothing from pytest.

Every wait here is bounded in time and polls at a fixed period, so a test that waits for
something that never happens fails with a sentence naming what it waited for."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMCTL = [sys.executable, "-m", "control.cli"]
POLL_S = 0.05  # the period of every wait below, unless a caller asks for another


# -- waiting for an event ----------------------------------------------------------------------


async def until(
    cond: Callable[[], object | Awaitable[object]],
    within: float = 5.0,
    what: str = "condition",
    every: float = POLL_S,
) -> float:
    """Await ``cond()`` (a plain or an async callable) until it is truthy; return how long it
    took. AssertionError naming ``what`` if it is still falsy after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return loop.time() - start
        if loop.time() - start > within:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(every)


def until_sync(
    cond: Callable[[], object], within: float = 5.0, what: str = "condition", every: float = POLL_S
) -> float:
    """The blocking twin of :func:`until`, for code outside an event loop."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(every)
    return time.monotonic() - start


def calls_done(obj: Any, method: str) -> list[tuple[Any, ...]]:
    """Wrap the async method ``obj.<method>`` (on this instance only) so that the positional
    arguments of every call it has finished are appended to the list returned: the event
    a test waits for when the effect it needs is that call having run."""
    real = getattr(obj, method)
    done: list[tuple[Any, ...]] = []

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real(*args, **kwargs)
        finally:
            done.append(args)

    setattr(obj, method, wrapper)
    return done


def leftover_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """The tasks of ``loop`` still pending, other than the one asking."""
    current = asyncio.current_task(loop)
    return [t for t in asyncio.all_tasks(loop) if t is not current and not t.done()]


def describe_task(task: asyncio.Task[Any]) -> str:
    """A task's name and the coroutine it runs, for a failure message."""
    coro = task.get_coro()
    code = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()} ({code})"


# -- clients ---------------------------------------------------------------------------------


class Pinger:
    """A WebSocket client of an access node that pings every ``every`` seconds, counts the
    pongs and notes anything else it gets (a frame, or the close that ended it). ``strict``:
    anything but a pong means it is no longer ``alive``."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, every: float = 1.0, strict: bool = False
    ) -> None:
        self.ws = ws
        self.every = every
        self.strict = strict
        self.pongs = 0
        self.other: list[Any] = []
        self.task = asyncio.create_task(self._run(), name="pinger")

    async def _run(self) -> None:
        while not self.ws.closed:
            await self.ws.send_json({"t": "ping"})
            msg = await self.ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.other.append((msg.type, self.ws.close_code))
                return
            frame = json.loads(msg.data)
            if frame["t"] == "pong":
                self.pongs += 1
            else:
                self.other.append(frame)
            await asyncio.sleep(self.every)

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.ws.closed and not (self.strict and self.other)

    async def close(self) -> None:
        self.task.cancel()
        # An error it ended with already shows as not alive.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.ws.close()


# -- ports -------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Until something listens on 127.0.0.1:``port``; TimeoutError after ``timeout``."""
    try:
        until_sync(lambda: port_open(port), timeout, f"nothing listened on 127.0.0.1:{port}")
    except AssertionError as err:
        raise TimeoutError(str(err)) from None


# -- processes ---------------------------------------------------------------------------------


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


# -- configs -----------------------------------------------------------------------------------


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s sections merged in, one level deep."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def local_config(path: Path, **sections: Any) -> dict[str, Any]:
    """The packaged configs/local.yaml with every listener moved to a free port and
    ``sections`` merged over it one level deep, written to ``path``; returns what it wrote."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    for node in config["access"]["nodes"]:
        node["port"] = free_port()
    config["scheduler"]["port"] = free_port()
    config["controller"]["port"] = free_port()
    config = merge_sections(config, sections)
    path.write_text(yaml.safe_dump(config))
    return config


# -- real servers ------------------------------------------------------------------------------


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


def _binary(name: str, package: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} not found: install Debian's {package} (scripts/test.sh does)")
    return binary


class EtcdServer(ServerProcess):
    """One etcd member; ``restart()`` keeps its data dir and port."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = _binary("etcd", "etcd-server")
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


class RedisServer(ServerProcess):
    """One redis-server with no persistence; ``restart()`` keeps its port."""

    def __init__(self, data_dir: Path, extra: Iterable[str] = ()) -> None:
        self.binary = _binary("redis-server", "redis-server")
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra = list(extra)  # more redis-server options (cluster mode, replicaof)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--maxclients",
            "10000",
            *self.extra,
        ]
        self._spawn(cmd, self.log)
        wait_port(self.port)


def redis_cli(port: int, *args: str, timeout: float = 60.0) -> str:
    """One redis-cli command against 127.0.0.1:``port``; its output (RuntimeError on failure)."""
    cmd = [_binary("redis-cli", "redis-tools"), "-h", "127.0.0.1", "-p", str(port), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or done.stdout.startswith("ERR") or "[ERR]" in done.stdout:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


CLUSTER_PORT_MAX = 55535


class RedisClusterServer:
    """A real Redis Cluster: ``masters`` masters with one replica each (Debian's
    redis-server in cluster mode, joined by ``redis-cli --cluster create``), on free
    loopback ports in ``data_dir``; a short node timeout so a failover takes ~1-2 s."""

    def __init__(self, data_dir: Path, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.servers = [
            RedisServer(
                data_dir / f"node{i}",
                [
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", str(node_timeout_ms)),
                    # a replica always volunteers, however long its link was down
                    *("--cluster-replica-validity-factor", "0"),
                ],
            )
            for i in range(2 * masters)
        ]
        for s in self.servers:  # a cluster bus listens on port + 10000: below 55536
            for _ in range(100):
                if s.port <= CLUSTER_PORT_MAX:
                    break
                s.port = free_port()

    @property
    def seeds(self) -> list[str]:
        """``host:port`` of every node (the engine's seed list)."""
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # the nodes that did start
            raise

    def _start(self) -> None:
        for s in self.servers:
            s.start()
        addrs = self.seeds
        redis_cli(
            self.servers[0].port,
            *("--cluster", "create", *addrs, "--cluster-replicas", "1", "--cluster-yes"),
        )
        until_sync(self.healthy, 30.0, "redis cluster ok on every node")

    def healthy(self) -> bool:
        """Every running node says cluster_state:ok and sees every slot served."""
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                info = redis_cli(s.port, "cluster", "info", timeout=5)
            except (RuntimeError, subprocess.TimeoutExpired):
                return False
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
        return True

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as seen by a running node: id, addr (host:port), role, master id,
        flags, slots."""
        port = next(s.port for s in self.servers if s.proc is not None)
        out = []
        for line in redis_cli(port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            role = "master" if "master" in parts[2] else "replica"
            out.append(
                {
                    "id": parts[0],
                    "addr": parts[1].split("@")[0],
                    "role": role,
                    "master": parts[3],
                    "flags": parts[2],
                    "slots": " ".join(parts[8:]),
                }
            )
        return out

    def server_at(self, addr: str) -> RedisServer:
        return next(s for s in self.servers if f"127.0.0.1:{s.port}" == addr)

    def masters(self) -> list[RedisServer]:
        """The running masters that serve slots, by the cluster's own view."""
        found = [
            n["addr"] for n in self.nodes() if n["role"] == "master" and "fail" not in n["flags"]
        ]
        return [self.server_at(a) for a in found if n_slots(self, a)]

    def reshard(self, sources: list[RedisServer], target: RedisServer, slots: int) -> str:
        """``redis-cli --cluster reshard`` of ``slots`` slots from the ``sources`` (in
        proportion to what each serves) to ``target``, blocking until redis-cli is done.
        A master left with no slot stops voting in failovers: keep some on each."""
        ids = {n["addr"]: n["id"] for n in self.nodes()}
        src = ",".join(ids[f"127.0.0.1:{s.port}"] for s in sources)
        dst = ids[f"127.0.0.1:{target.port}"]
        return redis_cli(
            target.port,
            *("--cluster", "reshard", f"127.0.0.1:{target.port}"),
            *("--cluster-from", src, "--cluster-to", dst, "--cluster-slots", str(slots)),
            *("--cluster-yes", "--cluster-pipeline", "100"),
            timeout=120,
        )

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def __enter__(self) -> RedisClusterServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def n_slots(cluster: RedisClusterServer, addr: str) -> int:
    """How many slots the master at ``addr`` serves."""
    total = 0
    for n in cluster.nodes():
        if n["addr"] != addr:
            continue
        for part in n["slots"].split():
            if part.startswith("["):  # a slot being migrated: listed beside its range
                continue
            lo, _, hi = part.partition("-")
            total += int(hi or lo) - int(lo) + 1
    return total


class SentinelGroup:
    """A Sentinel-managed Redis: one master, one replica and three redis-sentinel
    processes watching it as ``name`` (quorum 2, down after ``down_after_ms``)."""

    def __init__(self, data_dir: Path, name: str = "shard", down_after_ms: int = 1000) -> None:
        self.name = name
        self.data_dir = data_dir
        self.master = RedisServer(data_dir / "master")
        self.replica = RedisServer(data_dir / "replica")
        self.down_after_ms = down_after_ms
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The ring shard's URL: ``redis+sentinel://host:port,.../name``."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.master.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        binary = _binary("redis-sentinel", "redis-sentinel")
        for i, port in enumerate(self.sentinel_ports):
            folder = self.data_dir / f"sentinel{i}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} 5000\n"
            )
            with open(folder / "sentinel.log", "ab") as out:
                self.sentinels.append(subprocess.Popen([binary, str(conf)], stdout=out, stderr=out))
            wait_port(port)
        until_sync(self._replica_known, 30.0, "sentinels know the replica")

    def _replica_known(self) -> bool:
        try:
            out = redis_cli(self.sentinel_ports[0], "sentinel", "replicas", self.name, timeout=5)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return str(self.replica.port) in out

    def master_port(self) -> int:
        """The master's port as the sentinels name it now."""
        out = redis_cli(
            self.sentinel_ports[0], "sentinel", "get-master-addr-by-name", self.name, timeout=5
        ).split()
        return int(out[1])

    def stop(self) -> None:
        stop_processes(self.sentinels)
        self.sentinels = []
        self.replica.stop()
        self.master.stop()

    def __enter__(self) -> SentinelGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
        self.binary = _binary("prometheus", "prometheus")
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


class HaproxyServer(ServerProcess):
    """Debian's HAProxy in master-worker mode (``-W``) with its master CLI on a UNIX socket
    in ``data_dir``, started on ``config`` (a file with no listener yet is fine: the reloads
    that ``imctl lb watch`` makes add them). ``show_proc()`` is the master's process list."""

    def __init__(self, data_dir: Path) -> None:
        self.binary = _binary("haproxy", "haproxy")
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


def log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of a log, for a failure message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({log} missing)"


__all__ = [
    "IMCTL",
    "ROOT",
    "EtcdServer",
    "HaproxyServer",
    "Pinger",
    "PrometheusServer",
    "RedisServer",
    "ServerProcess",
    "calls_done",
    "describe_task",
    "free_port",
    "kill_process",
    "leftover_tasks",
    "local_config",
    "log_tail",
    "logged",
    "merge_sections",
    "port_open",
    "run_imctl",
    "spawn_imctl",
    "stop_process",
    "stop_processes",
    "until",
    "until_sync",
    "wait_port",
]
