"""Loopback ports: a free one, whether one is open, waiting until one is."""

from __future__ import annotations

import contextlib
import socket

from control.testing.waits import until_sync


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
