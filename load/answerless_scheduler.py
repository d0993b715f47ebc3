"""The scheduler with its decision taken out, for ``bench_scheduler``'s third column: the
same process, app, routes, rate of work and answer size as ``imctl scheduler``, but
``/v1/endpoint`` answers one prebuilt body. What it costs per request is aiohttp's path
through the scheduler's app; what imctl costs beyond it is the decision (parse, gray,
placement, three tickets, the answer).

    python -m load.answerless_scheduler CONFIG
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

from control.launch import run_scheduler
from control.scheduler.service import JSON, EndpointHandler
from control.settings import load_settings
from load.bare_server import ANSWER

# The bare baseline's answer, compact as imctl writes it: a real answer's shape and size.
BODY = json.dumps(ANSWER, separators=(",", ":")).encode()


def answer(self: EndpointHandler, request: web.Request, *_: object) -> web.Response:
    return web.Response(body=BODY, content_type=JSON)


def main() -> None:
    EndpointHandler.answer = answer  # type: ignore[method-assign]
    sys.exit(asyncio.run(run_scheduler(load_settings(sys.argv[1]))))


if __name__ == "__main__":
    main()
