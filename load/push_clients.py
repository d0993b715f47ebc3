"""Client process for the push benchmark: opens the given WebSockets, says "ready", then
reports when each got one pushed frame. Usage: python -m load.push_clients URL_FILE"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp


async def main() -> None:
    urls = json.loads(Path(sys.argv[1]).read_text())  # noqa: ASYNC240 - once, at start
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sem = asyncio.Semaphore(100)

        async def connect(url: str) -> aiohttp.ClientWebSocketResponse:
            async with sem:
                ws = await http.ws_connect(url, heartbeat=None)
                await ws.receive_json(timeout=30)  # welcome
                return ws

        sockets = await asyncio.gather(*(connect(u) for u in urls))
        print(json.dumps({"ready": len(sockets)}), flush=True)
        times: list[float] = []

        async def wait(ws: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                frame = await ws.receive_json(timeout=60)
                if frame.get("t") == "bench":
                    times.append(time.time())
                    return

        await asyncio.gather(*(wait(ws) for ws in sockets))
        print(
            json.dumps({"received": len(times), "first": min(times), "last": max(times)}),
            flush=True,
        )
        for ws in sockets:
            await ws.close()


if __name__ == "__main__":
    asyncio.run(main())
