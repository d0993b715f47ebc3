"""The public test kit: real servers and imctl processes on free loopback ports with their own
temp dirs, and one way to wait for an event. Used by tests/ (through thin pytest fixtures in
tests/conftest.py) and by the load/ benchmarks alike; it imports nothing from pytest.

Every wait here is bounded in time and polls at a fixed period, so a test that waits for
something that never happens fails with a sentence naming what it waited for.

One module per job: waits (until, until_sync, calls_done), tasks (leftover-task lookup),
ports, processes (imctl children, stopping, logs), configs (local_config), clients (Pinger),
servers (the ServerProcess base) and one per real server: etcd, redis (a server, a Redis
Cluster, a Sentinel group), prometheus, haproxy. Import from here: the names below are the
kit's interface, the module layout is not."""

from control.testing.clients import Pinger
from control.testing.configs import local_config, merge_sections
from control.testing.etcd import EtcdServer
from control.testing.haproxy import HaproxyServer
from control.testing.ports import free_port, port_open, wait_port
from control.testing.processes import (
    IMCTL,
    ROOT,
    kill_process,
    log_tail,
    logged,
    run_imctl,
    spawn_imctl,
    stop_process,
    stop_processes,
)
from control.testing.prometheus import PrometheusServer
from control.testing.redis import (
    CLUSTER_PORT_MAX,
    RedisClusterServer,
    RedisServer,
    SentinelGroup,
    n_slots,
    redis_cli,
)
from control.testing.servers import ServerProcess
from control.testing.tasks import describe_task, leftover_tasks
from control.testing.waits import POLL_S, calls_done, until, until_sync

__all__ = [
    "CLUSTER_PORT_MAX",
    "IMCTL",
    "POLL_S",
    "ROOT",
    "EtcdServer",
    "HaproxyServer",
    "Pinger",
    "PrometheusServer",
    "RedisClusterServer",
    "RedisServer",
    "SentinelGroup",
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
    "n_slots",
    "port_open",
    "redis_cli",
    "run_imctl",
    "spawn_imctl",
    "stop_process",
    "stop_processes",
    "until",
    "until_sync",
    "wait_port",
]
