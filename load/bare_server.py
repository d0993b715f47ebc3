"""The baseline: a bare aiohttp JSON handler — ``web.json_response`` of a dict shaped and
sized like the scheduler's answer — with no parsing, no decision, no signing, no metrics."""

from __future__ import annotations

import sys

from aiohttp import web

ANSWER = {
    "node": "node-0001",
    "endpoint": "ws://10.0.0.1:9000/ws",
    "region": "r1",
    "track": "stable",
    "ticket": "v1." + "x" * 140 + "." + "y" * 43,
    "expires_in": 60,
    "fallbacks": [
        {
            "node": f"node-000{i}",
            "endpoint": "ws://10.0.0.2:9000/ws",
            "ticket": "v1." + "x" * 140 + "." + "y" * 43,
        }
        for i in range(2)
    ],
    "heartbeat": {"interval_s": 30.0, "timeout_s": 90.0},
    "backoff": {"base_s": 1.0, "factor": 2.0, "jitter": 0.5, "max_s": 60.0},
}


async def handle(request: web.Request) -> web.Response:
    return web.json_response(ANSWER)


def main() -> None:
    app = web.Application()
    app.router.add_get("/v1/endpoint", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
