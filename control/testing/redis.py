"""Real Redis on loopback: one redis-server, a Redis Cluster (masters with a replica each,
reshard) and a Sentinel group, with redis-cli to drive them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from control.testing.ports import free_port, wait_port
from control.testing.processes import stop_processes
from control.testing.servers import ServerProcess, require_binary
from control.testing.waits import until_sync


class RedisServer(ServerProcess):
    """One redis-server with no persistence; ``restart()`` keeps its port."""

    def __init__(self, data_dir: Path, extra: Iterable[str] = ()) -> None:
        self.binary = require_binary("redis-server", "redis-server")
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
    cmd = [require_binary("redis-cli", "redis-tools"), "-h", "127.0.0.1", "-p", str(port), *args]
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
        binary = require_binary("redis-sentinel", "redis-sentinel")
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
