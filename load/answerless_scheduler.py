"""The scheduler with its decision taken out, for ``bench_scheduler``'s third column: the
same process, app, routes, rate of work and answer size as ``imctl scheduler``, but
``/v1/endpoint`` answers one prebuilt body. What it costs per request is aiohttp's path
through the scheduler's app; what imctl costs beyond it is the decision (parse, gray,
placement, three tickets, the answer).

    python -m load.answerless_scheduler CONFIG
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from control.launch import run_scheduler
from control.scheduler.service import JSON, EndpointHandler
from control.settings import load_settings

# The size of a real answer: three ~190-character tickets, two fallbacks.
_TICKET = "v1." + "x" * 140 + "." + "y" * 43
BODY = (
    '{"node":"node-0001","endpoint":"ws://10.0.0.1:9000/ws","region":"r1","track":"stable",'
    f'"ticket":"{_TICKET}","expires_in":60,"fallbacks":['
    f'{{"node":"node-0002","endpoint":"ws://10.0.0.2:9000/ws","ticket":"{_TICKET}"}},'
    f'{{"node":"node-0003","endpoint":"ws://10.0.0.3:9000/ws","ticket":"{_TICKET}"}}],'
    '"heartbeat":{"interval_s":30.0,"timeout_s":90.0},'
    '"backoff":{"base_s":1.0,"factor":2.0,"jitter":0.5,"max_s":60.0}}'
).encode()


def answer(self: EndpointHandler, request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type=JSON)


def main() -> None:
    EndpointHandler.answer = answer  # type: ignore[method-assign]
    sys.exit(asyncio.run(run_scheduler(load_settings(sys.argv[1]))))


if __name__ == "__main__":
    main()
