"""Client process for the push benchmark: opens the given WebSockets, says "ready", then
reports when each got one pushed frame. Usage: python -m load.push_clients URL_FILE

These clients are the measuring instrument and share the machine's two cores with the
three access nodes, so they are as lean as a reader can be: raw sockets, a hand-written
upgrade request, one epoll loop that only looks for the pushed frame's marker. (aiohttp
clients spent more CPU reading frames than the nodes spent writing them.)
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

MARKER = b'"bench"'
CONNECT_TIMEOUT_S = 10.0
WAIT_S = 60.0


def upgrade(url: str) -> socket.socket:
    """Open one WebSocket and wait for the node's welcome frame."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT_S)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while b"welcome" not in data:  # the 101 headers, then the first frame
        chunk = sock.recv(4096)
        if not chunk or time.monotonic() > deadline:
            raise RuntimeError(f"no welcome from {parts.netloc}: {data[:200]!r}")
        data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"upgrade refused: {data[:200]!r}")
    sock.setblocking(False)
    return sock


def main() -> None:
    urls = json.loads(Path(sys.argv[1]).read_text())
    sockets = {s.fileno(): s for s in map(upgrade, urls)}
    print(json.dumps({"ready": len(sockets)}), flush=True)
    poller = select.epoll()
    for fd in sockets:
        poller.register(fd, select.EPOLLIN)
    times: list[float] = []
    tails = dict.fromkeys(sockets, b"")  # a marker split across two reads is still found
    deadline = time.monotonic() + WAIT_S
    while tails and time.monotonic() < deadline:
        for fd, _ in poller.poll(1.0):
            chunk = sockets[fd].recv(65536)
            data = tails[fd] + chunk
            if MARKER in data:
                times.append(time.time())
            elif chunk:
                tails[fd] = data[-len(MARKER) :]
                continue
            poller.unregister(fd)  # got its frame, or the node closed it
            del tails[fd]
    print(
        json.dumps(
            {
                "received": len(times),
                "first": min(times, default=0.0),
                "last": max(times, default=0.0),
            }
        ),
        flush=True,
    )
    for s in sockets.values():
        s.close()


if __name__ == "__main__":
    main()
