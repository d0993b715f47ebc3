"""Real servers for tests: they live in the public test kit, control/testing/; this name
stays so older imports keep working."""

from control.testing import EtcdServer, RedisServer, ServerProcess, free_port, wait_port

__all__ = ["EtcdServer", "RedisServer", "ServerProcess", "free_port", "wait_port"]
