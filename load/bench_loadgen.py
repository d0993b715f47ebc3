"""The load generator's own cost: connections and messages one generator process drives,
against a bare aiohttp WebSocket client loop doing the same work in the same run.

Both drive one cheap server process (``serve``: /v1/endpoint answers a fixed endpoint, the
WebSocket says welcome, answers ping and acks msg), so the client side is what is
measured: CPU seconds of this process per connection (ask + open + welcome) and per
message (send + ack), medians over rounds that alternate generator and baseline.

    python -m load.bench_loadgen [--clients 2000] [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from control.testing import free_port, wait_port
from load.gen.client import Client, Population
from load.gen.scenario import Scenario

INTERVAL_S = 0.5  # each connection's message interval in the message phase


def serve(port: int) -> None:
    async def endpoint(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node": "bare",
                "endpoint": f"ws://127.0.0.1:{port}/ws",
                "ticket": "t",
                "fallbacks": [],
                "heartbeat": {"interval_s": 30.0},
                "backoff": {"base_s": 1.0, "factor": 2.0, "jitter": 0.5, "max_s": 60.0},
            }
        )

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        await ws.send_str('{"t":"welcome","conn":"bare.1","node":"bare"}')
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame.get("t") == "msg":
                    await ws.send_str(json.dumps({"t": "ack", "id": frame.get("id")}))
                else:
                    await ws.send_str('{"t":"pong"}')
        return ws

    app = web.Application()
    app.router.add_get("/v1/endpoint", endpoint)
    app.router.add_get("/ws", ws_handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


class Figures(dict[str, float]):
    pass


def _figures(
    clients: int, conn_wall: float, conn_cpu: float, acked: int, msg_wall: float, msg_cpu: float
) -> Figures:
    return Figures(
        conn_per_s=clients / conn_wall,
        conn_cpu_us=conn_cpu / clients * 1e6,
        msg_per_s=acked / msg_wall,
        msg_cpu_us=msg_cpu / max(acked, 1) * 1e6,
    )


async def _generator(server: str, clients: int, seconds: float) -> Figures:
    s = Scenario(server=server, clients=clients, ramp_s=0, message_interval_s=INTERVAL_S,
                 tokens="none", duration_s=3600, settle_s=1)  # fmt: skip
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as asks,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sockets,
    ):
        loop = asyncio.get_running_loop()
        pop = Population(s, asks, sockets, lambda uid: None, loop.time())
        c0, w0 = time.process_time(), time.perf_counter()
        tasks = [asyncio.create_task(Client(pop, i).run()) for i in range(clients)]
        while len(pop.connected) < clients and time.perf_counter() - w0 < 120:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        conn_cpu, conn_wall = time.process_time() - c0, time.perf_counter() - w0
        pop.window.counts.clear()
        c1, w1 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        acked = pop.window.counts["acked"]
        msg_cpu, msg_wall = time.process_time() - c1, time.perf_counter() - w1
        pop.stopping.set()
        await asyncio.gather(*(ws.close() for ws in list(pop.open)), return_exceptions=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return _figures(clients, conn_wall, conn_cpu, acked, msg_wall, msg_cpu)


async def _bare(server: str, clients: int, seconds: float) -> Figures:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as asks,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sockets,
    ):
        opened: list[aiohttp.ClientWebSocketResponse] = []
        acked = 0
        measuring = asyncio.Event()
        done = asyncio.Event()

        async def one(i: int) -> None:
            nonlocal acked
            params = {"uid": f"b{i}", "device": "d", "platform": "ios", "version": "1.0.0"}
            async with asks.get(f"{server}/v1/endpoint", params=params) as resp:
                answer = await resp.json()
            ws = await sockets.ws_connect(f"{answer['endpoint']}?ticket={answer['ticket']}")
            await ws.receive()
            opened.append(ws)
            await measuring.wait()
            n = 0
            while not done.is_set():
                await asyncio.sleep(INTERVAL_S)
                n += 1
                await ws.send_str(json.dumps({"t": "msg", "to": "x", "body": "x", "id": n}))
                await ws.receive()
                acked += 1

        c0, w0 = time.process_time(), time.perf_counter()
        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        while len(opened) < clients and time.perf_counter() - w0 < 120:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        conn_cpu, conn_wall = time.process_time() - c0, time.perf_counter() - w0
        measuring.set()
        c1, w1 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        got = acked
        msg_cpu, msg_wall = time.process_time() - c1, time.perf_counter() - w1
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return _figures(clients, conn_wall, conn_cpu, got, msg_wall, msg_cpu)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m load.bench_loadgen")
    p.add_argument("mode", nargs="?", default="bench")
    p.add_argument("--port", type=int)
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    if a.mode == "serve":
        serve(a.port)
        return
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "load.bench_loadgen", "serve", "--port", str(port)]
    )
    try:
        wait_port(port, 20)
        url = f"http://127.0.0.1:{port}"
        runs: dict[str, list[Figures]] = {"imctl load": [], "bare aiohttp": []}
        for _ in range(a.rounds):
            runs["imctl load"].append(asyncio.run(_generator(url, a.clients, a.seconds)))
            runs["bare aiohttp"].append(asyncio.run(_bare(url, a.clients, a.seconds)))
        med: dict[str, dict[str, Any]] = {
            name: {k: statistics.median(f[k] for f in fs) for k in fs[0]}
            for name, fs in runs.items()
        }
        print(f"{a.clients} connections, a message every {INTERVAL_S}s each, "
              f"{a.rounds} rounds, medians")  # fmt: skip
        print(f"{'':14} {'conn/s':>8} {'CPU us/conn':>12} {'msg/s':>8} {'CPU us/msg':>11}")
        for name, m in med.items():
            print(f"{name:14} {m['conn_per_s']:8.0f} {m['conn_cpu_us']:12.0f} "
                  f"{m['msg_per_s']:8.0f} {m['msg_cpu_us']:11.0f}")  # fmt: skip
        g, b = med["imctl load"], med["bare aiohttp"]
        print(f"ratio (load/bare) CPU per connection {g['conn_cpu_us'] / b['conn_cpu_us']:.2f}, "
              f"per message {g['msg_cpu_us'] / b['msg_cpu_us']:.2f}")  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
