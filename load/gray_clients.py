"""Client process for the rollback benchmark (load/bench_gray_rollback.py): places its users
through the scheduler, says "ready", follows every ``reconnect`` frame (waits its
``after_ms``, closes, asks the scheduler again, connects where it is told), then reports
every move and every scheduler answer as one JSON line and waits for a line on stdin
before closing its sockets. Usage: python -m load.gray_clients SPEC_FILE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp


async def clients_main(spec: dict[str, Any]) -> None:
    """One client process: places its users, says "ready", follows reconnect frames, then
    reports every move and every scheduler answer, and waits for a line on stdin."""
    canary = set(spec["canary"])
    asks: list[float] = []
    statuses: Counter[int] = Counter()
    told: list[float] = []
    landed: list[float] = []
    where: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0)  # each open WebSocket holds a connection
    http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
    gate = asyncio.Semaphore(64)
    endpoint = f"{spec['scheduler']}/v1/endpoint?{spec['query']}&uid="

    async def ask(uid: str) -> dict[str, Any]:
        for _ in range(50):  # bounded: a 503 or a stale answer is asked again
            asks.append(time.time())
            async with http.get(endpoint + uid) as resp:
                statuses[resp.status] += 1
                body = await resp.json()
            if resp.status == 200:
                return dict(body)
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{uid}: no answer from the scheduler")

    async def connect(answer: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
        url = f"{answer['endpoint']}?ticket={answer['ticket']}&platform=ios&version=1.0"
        ws = await http.ws_connect(url, autoping=True)
        frame = await ws.receive_json(timeout=30)
        if frame.get("t") != "welcome":
            raise RuntimeError(f"no welcome: {frame}")
        return ws

    async def land(uid: str, avoid: set[str]) -> tuple[str, aiohttp.ClientWebSocketResponse]:
        """Ask and connect, as a client does: a refused handshake (a node saying "retry
        later" while the machine is overloaded) is retried, bounded, and counted."""
        for attempt in range(10):
            answer = await ask(uid)
            for _ in range(20):  # bounded: a scheduler without the rollback yet
                if answer["node"] not in avoid:
                    break
                await asyncio.sleep(0.1)
                answer = await ask(uid)
            try:
                return answer["node"], await connect(answer)
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                failures[f"retried: {type(exc).__name__}"] += 1
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    async def place(uid: str) -> aiohttp.ClientWebSocketResponse:
        async with gate:
            return (await land(uid, set()))[1]

    async def follow(uid: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            frame = await ws.receive_json(timeout=spec["wait_s"])
            if frame.get("t") != "reconnect":
                failures[f"frame {frame.get('t')}"] += 1
                return
            told.append(time.time())
            await asyncio.sleep(frame.get("after_ms", 0) / 1000)
            await ws.close()
            async with gate:
                node, new = await land(uid, canary)
            landed.append(time.time())
            where[node] += 1
            kept.append(new)
        except Exception as exc:  # counted and reported: a lost client
            failures[type(exc).__name__] += 1

    kept: list[aiohttp.ClientWebSocketResponse] = []
    sockets = await asyncio.gather(*(place(u) for u in spec["uids"]))
    print(json.dumps({"ready": len(sockets)}), flush=True)
    await asyncio.gather(*(follow(u, ws) for u, ws in zip(spec["uids"], sockets, strict=True)))
    report = {
        "asks": asks,
        "statuses": dict(statuses),
        "told": told,
        "landed": landed,
        "where": dict(where),
        "failures": dict(failures),
    }
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(ws.close() for ws in kept), return_exceptions=True)
    await http.close()


if __name__ == "__main__":
    asyncio.run(clients_main(json.loads(Path(sys.argv[1]).read_text())))
