"""``imctl connect``: a reference client. Asks the scheduler for an endpoint, opens the
WebSocket with the ticket (trying the answer's fallbacks when a node cannot be reached),
keeps the heartbeat, prints every frame, sends each line typed on stdin as a frame, follows
``reconnect`` frames back to the scheduler, and waits out failures with the backoff policy
the scheduler sent."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import aiohttp

from control.common.tls import client_context

# Until the scheduler has answered once: the policy's shipped defaults.
DEFAULT_BACKOFF = {"base_s": 1.0, "factor": 2.0, "jitter": 0.5, "max_s": 60.0}

Ending = Literal["done", "reconnect", "lost", "kicked"]
QUIET_S = 0.3  # at the end of input: the node silent this long has answered everything


def backoff_delay(
    policy: Mapping[str, float], attempt: int, rand: Callable[[], float] = random.random
) -> float:
    """The wait before retry ``attempt`` (0 first): ``min(max_s, base_s * factor**attempt)``
    with a random share of it, up to ``jitter``, taken off, so clients that failed together
    do not come back together."""
    ceiling = min(policy["max_s"], policy["base_s"] * policy["factor"] ** min(attempt, 64))
    return ceiling * (1 - policy["jitter"] * rand())


class Refused(Exception):
    """The scheduler answered, but not with an endpoint (429, 503...)."""

    def __init__(self, status: int, message: str, retry_after: float) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.retry_after = retry_after


class Unauthorized(Exception):
    """The scheduler refused the credential (401/403): asking again will not help."""


async def _ask(
    http: aiohttp.ClientSession, server: str, params: dict[str, str], token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with http.get(f"{server}/v1/endpoint", params=params, headers=headers) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            message = body.get("message", body) if isinstance(body, dict) else body
            if resp.status in (401, 403):
                raise Unauthorized(f"HTTP {resp.status}: {message}")
            try:
                retry_after = float(resp.headers.get("Retry-After", "0"))
            except ValueError:
                retry_after = 0.0
            raise Refused(resp.status, str(message), min(max(retry_after, 0.0), 3600.0))
        return dict(body)


class Output:
    """Where the client's lines go. ``text``: frames from the node as ``< {...}``, typed
    ones as ``> ...``, notes as ``# ...``, all on stdout. ``json``: stdout holds only the
    node's frames, one JSON object a line (for ``jq`` and scripts); notes go to stderr."""

    def __init__(self, form: str = "text") -> None:
        self.json = form == "json"

    def frame(self, frame: Any) -> None:
        text = json.dumps(frame, ensure_ascii=False)
        print(text if self.json else f"< {text}", flush=True)

    def sent(self, line: str) -> None:
        if not self.json:
            print(f"> {line}", flush=True)

    def note(self, text: str) -> None:
        print(f"# {text}", file=sys.stderr if self.json else sys.stdout, flush=True)


async def _open(
    http: aiohttp.ClientSession,
    answer: Mapping[str, Any],
    platform: str,
    out: Output,
    version: str = "",
) -> aiohttp.ClientWebSocketResponse | None:
    """A WebSocket to the answer's node, else to each fallback in order; None when none of
    them can be reached."""
    candidates = [answer, *answer.get("fallbacks", [])]
    for i, c in enumerate(candidates):
        # The app version lets the node tell whether a release still takes this client.
        url = f"{c['endpoint']}?ticket={c['ticket']}&platform={platform}&version={version}"
        try:
            return await http.ws_connect(url)
        except (aiohttp.ClientError, OSError) as exc:
            then = f"trying {candidates[i + 1]['node']}" if i + 1 < len(candidates) else "none left"
            out.note(f"{c['node']}: cannot connect ({exc}); {then}")
    return None


async def run(
    server: str,
    uid: str,
    device: str,
    platform: str,
    version: str,
    region: str | None,
    max_attempts: int = 10,
    output: str = "text",
    token: Callable[[], str | None] = lambda: None,
    cafile: str = "",
) -> int:
    """Connect as ``uid``; ``token`` gives the credential for each ask of the scheduler;
    ``cafile`` a private CA trusted for https:// and wss:// (default: the system's)."""
    out = Output(output)
    params = {"uid": uid, "device": device, "platform": platform, "version": version}
    if region:
        params["region"] = region
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, None)

    # A daemon thread, not the loop's executor: asyncio.run would wait at exit for a read
    # of a terminal nobody types into (the client that gave up would hang there).
    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    policy: Mapping[str, float] = DEFAULT_BACKOFF
    failures = 0  # in a row: a session that opened starts the count again

    async def wait_after_failure(why: str, at_least: float = 0.0) -> bool:
        """Count a failure; False when it was one too many, else wait out the backoff."""
        nonlocal failures
        failures += 1
        if failures >= max_attempts:
            return False
        delay = max(backoff_delay(policy, failures - 1), at_least)
        out.note(f"{why}; again in {delay:.1f}s")
        await asyncio.sleep(delay)
        return True

    connector = aiohttp.TCPConnector(ssl=client_context(cafile) if cafile else True)
    async with aiohttp.ClientSession(connector=connector) as http:
        # Unbounded while it works: a client stays connected across drains and restarts.
        while True:
            try:
                answer = await _ask(http, server, params, token())
            except Unauthorized as exc:
                out.note(f"scheduler: {exc}; giving up (check the token)")
                return 1
            except (aiohttp.ClientError, OSError, Refused, ValueError) as exc:
                # A refusal's Retry-After is the least to wait.
                at_least = exc.retry_after if isinstance(exc, Refused) else 0.0
                if not await wait_after_failure(f"scheduler: {exc}", at_least):
                    break
                continue
            policy = answer["backoff"]
            out.note(
                f"scheduler: node {answer['node']} ({answer['region']}, track "
                f"{answer['track']}), fallbacks {[f['node'] for f in answer['fallbacks']]}"
            )
            ws = await _open(http, answer, platform, out, version)
            if ws is not None:
                failures = 0
                async with ws:
                    interval = float(answer["heartbeat"]["interval_s"])
                    ending, after = await _session(ws, lines, interval, out)
                if ending in ("done", "kicked"):
                    return 0
                if ending == "reconnect":
                    out.note(f"reconnecting in {after:.1f}s")
                    await asyncio.sleep(after)
                    continue
            if not await wait_after_failure("connection lost; asking the scheduler"):
                break
    out.note(f"giving up after {failures} failed attempts in a row")
    return 1


async def _session(
    ws: aiohttp.ClientWebSocketResponse,
    lines: asyncio.Queue[str | None],
    interval: float,
    out: Output,
) -> tuple[Ending, float]:
    """How the session ended, and for ``reconnect`` the seconds to wait first."""

    async def heartbeat() -> None:
        while not ws.closed:
            await asyncio.sleep(interval)
            await ws.send_json({"t": "ping"})

    leaving = asyncio.Event()  # the user is done: a close now is ours, not a lost link
    welcomed = asyncio.Event()  # frames go out only once the node has said welcome
    heard = asyncio.Event()  # set by every frame from the node

    async def typed() -> None:
        await welcomed.wait()
        while True:
            line = await lines.get()
            if line is None:
                # The answers to what was sent are still on their way (a close now would
                # drop them): leave once the node has been quiet a moment, 2 s at most.
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    heard.clear()
                    try:
                        await asyncio.wait_for(heard.wait(), QUIET_S)
                    except TimeoutError:
                        break  # quiet: everything sent has been answered
                out.note("end of input: disconnecting")
                leaving.set()
                await ws.close()
                return
            if line:
                await ws.send_str(line)
                out.sent(line)

    tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(typed())]
    try:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            heard.set()
            frame = json.loads(msg.data)
            if frame.get("t") != "pong":
                out.frame(frame)
            if frame.get("t") == "welcome":
                welcomed.set()
            if frame.get("t") == "reconnect":
                return "reconnect", float(frame.get("after_ms", 0)) / 1000 + random.uniform(0, 0.5)
        if leaving.is_set():
            return "done", 0.0
        if ws.close_code == 4001:  # kicked: the same device logged in elsewhere
            return "kicked", 0.0
        out.note(f"closed by the node: code {ws.close_code}")
        return "lost", 0.0
    finally:
        for t in tasks:
            t.cancel()
