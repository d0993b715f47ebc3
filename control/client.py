"""``imctl connect``: a reference client. Asks the scheduler for an endpoint, opens the
WebSocket with the ticket, keeps the heartbeat, prints every frame, sends each line typed
on stdin as a frame, and follows ``reconnect`` frames back to the scheduler."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

import aiohttp


async def _ask(http: aiohttp.ClientSession, server: str, params: dict[str, str]) -> dict[str, Any]:
    async with http.get(f"{server}/v1/endpoint", params=params) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"scheduler: HTTP {resp.status}: {body.get('message', body)}")
        return dict(body)


def _show(direction: str, frame: Any) -> None:
    print(f"{direction} {json.dumps(frame, ensure_ascii=False)}", flush=True)


async def run(
    server: str,
    uid: str,
    device: str,
    platform: str,
    version: str,
    region: str | None,
    max_sessions: int = 10,
) -> int:
    params = {"uid": uid, "device": device, "platform": platform, "version": version}
    if region:
        params["region"] = region
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, None)

    loop.run_in_executor(None, read_stdin)
    async with aiohttp.ClientSession() as http:
        for _ in range(max_sessions):
            answer = await _ask(http, server, params)
            print(
                f"# scheduler: node {answer['node']} ({answer['region']}, track "
                f"{answer['track']}), fallbacks {[f['node'] for f in answer['fallbacks']]}",
                flush=True,
            )
            url = f"{answer['endpoint']}?ticket={answer['ticket']}&platform={platform}"
            async with http.ws_connect(url) as ws:
                interval = float(answer["heartbeat"]["interval_s"])
                outcome = await _session(ws, lines, interval)
            if outcome is None:
                return 0
            print(f"# reconnecting in {outcome:.1f}s", flush=True)
            await asyncio.sleep(outcome)
    return 1


async def _session(
    ws: aiohttp.ClientWebSocketResponse, lines: asyncio.Queue[str | None], interval: float
) -> float | None:
    """Returns seconds to wait before reconnecting, or None when the user is done."""

    async def heartbeat() -> None:
        while not ws.closed:
            await asyncio.sleep(interval)
            await ws.send_json({"t": "ping"})

    async def typed() -> None:
        while True:
            line = await lines.get()
            if line is None:
                print("# end of input: disconnecting", flush=True)
                await ws.close()
                return
            if line:
                await ws.send_str(line)
                print(f"> {line}", flush=True)

    tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(typed())]
    try:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("t") != "pong":
                _show("<", frame)
            if frame.get("t") == "reconnect":
                return float(frame.get("after_ms", 0)) / 1000 + random.uniform(0, 0.5)
        if ws.close_code not in (1000, None):
            print(f"# closed by the node: code {ws.close_code}", flush=True)
            return 1.0 if ws.close_code != 4001 else None
        return None
    finally:
        for t in tasks:
            t.cancel()
