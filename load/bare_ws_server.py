"""The WebSocket baseline: a bare aiohttp server that upgrades, sends one small JSON frame
and answers pings, with no ticket, no presence, no bookkeeping.

With ``--push`` it also serves the push baseline, ``POST /push``: it writes the request
body as one text frame to every connected socket, the way an access node writes a push
(one prebuilt frame, one transport write each), with no lookup, no authentication and no
uid list to read.
"""

from __future__ import annotations

import sys

from aiohttp import WSMsgType, web

SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets", set)


async def handle(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    await ws.send_str('{"t":"welcome","conn":"bare.1","node":"bare"}')
    sockets = request.app.get(SOCKETS)  # kept only for --push: the idle baseline stays bare
    if sockets is not None:
        sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str('{"t":"pong"}')
    finally:
        if sockets is not None:
            sockets.discard(ws)
    return ws


async def push(request: web.Request) -> web.Response:
    payload = await request.read()
    n = len(payload)  # a frame header as RFC 6455 section 5.2 lays it out, unmasked
    header = bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")
    frame = header + payload
    written = 0
    for ws in request.app[SOCKETS]:
        transport = ws._writer.transport if ws._writer is not None else None
        if transport is not None and not transport.is_closing():
            transport.write(frame)
            written += 1
    return web.json_response({"written": written})


def main() -> None:
    app = web.Application()
    app.router.add_get("/ws", handle)
    if "--push" in sys.argv[2:]:
        app[SOCKETS] = set()
        app.router.add_post("/push", push)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096
    )


if __name__ == "__main__":
    main()
