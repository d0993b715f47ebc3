"""A client process for the access benchmarks: opens N WebSockets, reports, then holds them
idle until stdin closes. Usage: python -m load.ws_clients URL_FILE START COUNT CONCURRENCY
[CAFILE] (CAFILE: a private CA trusted for wss:// URLs)"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from pathlib import Path

import aiohttp


async def main() -> None:
    urls = json.loads(Path(sys.argv[1]).read_text())  # noqa: ASYNC240 - once, at start
    start, count, concurrency = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cafile = sys.argv[5] if len(sys.argv) > 5 else ""
    tls = ssl.create_default_context(cafile=cafile) if cafile else True
    sem = asyncio.Semaphore(concurrency)
    conns: list[aiohttp.ClientWebSocketResponse] = []
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=tls)) as http:

        async def one(i: int) -> None:
            nonlocal failures
            async with sem:
                try:
                    ws = await http.ws_connect(urls[i], autoping=True, heartbeat=None)
                    await ws.receive(timeout=30)
                    conns.append(ws)
                except (aiohttp.ClientError, TimeoutError):
                    failures += 1

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(start, start + count)))
        elapsed = time.perf_counter() - t
        print(
            json.dumps({"open": len(conns), "failures": failures, "seconds": elapsed}), flush=True
        )
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for ws in conns:
            await ws.close()


if __name__ == "__main__":
    asyncio.run(main())
