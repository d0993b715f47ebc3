"""The WebSocket baseline: a bare aiohttp server that upgrades, sends one small JSON frame
and answers pings, with no ticket, no presence, no bookkeeping."""

from __future__ import annotations

import sys

from aiohttp import WSMsgType, web


async def handle(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    await ws.send_str('{"t":"welcome","conn":"bare.1","node":"bare"}')
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str('{"t":"pong"}')
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", handle)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096
    )


if __name__ == "__main__":
    main()
