"""``imctl connect`` as a client app behaves: a node it cannot reach sends it to the
answer's fallbacks, and when nothing can be reached it waits out the scheduler's backoff
policy and asks again, then gives up with exit 1."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from control.testing import free_port
from tests.cluster import LocalCluster, cluster_settings
from tests.tokens import token


def dead_node(region: str) -> dict[str, Any]:
    """In the scheduler's registry, but nothing listens at its endpoint."""
    endpoint = f"ws://127.0.0.1:{free_port()}/ws"
    return {"id": "dead-1", "endpoint": endpoint, "region": region, "zone": "a", "capacity": 100}


async def connect(server: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli", "connect", "--uid", "erin", "--server", server,
        "--token", token("erin"), *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.timeout(60)
async def test_an_unreachable_node_sends_the_client_to_a_fallback() -> None:
    settings = cluster_settings(nodes=1, registry={"static_nodes": [dead_node("south")]})
    async with LocalCluster(settings, scheduler=True) as c:
        server = f"http://127.0.0.1:{settings.scheduler.port}"
        client = await connect(server, "--region", "south")  # south: only the dead node
        assert client.stdout is not None and client.stdin is not None
        seen: list[str] = []
        while not any('"welcome"' in line for line in seen):
            line = (await asyncio.wait_for(client.stdout.readline(), 20)).decode()
            assert line, f"client ended early: {seen}"
            seen.append(line)
        assert seen[0].startswith("# scheduler: node dead-1 (south"), seen
        assert seen[1].startswith("# dead-1: cannot connect (") and "trying n0" in seen[1], seen
        assert '"node": "n0"' in seen[2], seen
        assert (await c.presence.who("erin"))[0].node == "n0"
        client.stdin.close()
        await asyncio.wait_for(client.wait(), 20)
        assert client.returncode == 0


@pytest.mark.timeout(60)
async def test_nothing_reachable_backs_off_then_gives_up() -> None:
    settings = cluster_settings(
        nodes=0,
        registry={"static_nodes": [dead_node("north")]},
        backoff={"base_s": 0.05, "factor": 2, "jitter": 0, "max_s": 0.2},
    )
    async with LocalCluster(settings, scheduler=True):
        client = await connect(f"http://127.0.0.1:{settings.scheduler.port}")
        out, _ = await asyncio.wait_for(client.communicate(), 40)
    text = out.decode()
    assert client.returncode == 1, text
    waits = [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in text.splitlines()
             if line.startswith("# connection lost; asking the scheduler; again in")]  # fmt: skip
    assert waits == [0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2], text  # none after the last
    assert text.rstrip().endswith("# giving up after 10 failed attempts in a row")


@pytest.mark.timeout(60)
async def test_a_refusal_is_waited_out_for_its_retry_after() -> None:
    """No node can take anyone: the scheduler's 503 says when to come back, and the client
    waits at least that, however short its own backoff."""
    settings = cluster_settings(
        nodes=0,
        scheduler={"retry_after_s": 2},
        backoff={"base_s": 0.05, "factor": 2, "jitter": 0, "max_s": 0.2},
    )
    async with LocalCluster(settings, scheduler=True):
        client = await connect(f"http://127.0.0.1:{settings.scheduler.port}")
        assert client.stdout is not None
        first = (await asyncio.wait_for(client.stdout.readline(), 20)).decode()
        client.kill()
        await client.wait()
    assert first.startswith("# scheduler: HTTP 503: no access node can take this client"), first
    assert first.rstrip().endswith("again in 2.0s"), first


@pytest.mark.timeout(60)
async def test_piped_input_waits_for_the_welcome() -> None:
    """Input that is all there at once (a pipe, a script) goes out only after the node's
    welcome, and the answers come back before the client leaves."""
    settings = cluster_settings(nodes=1)
    async with LocalCluster(settings, scheduler=True):
        client = await connect(f"http://127.0.0.1:{settings.scheduler.port}")
        out, err = await asyncio.wait_for(client.communicate(b'{"t": "echo", "body": "hi"}\n'), 30)
    text = out.decode()
    assert client.returncode == 0, (text, err)
    lines = text.splitlines()
    welcome = next(i for i, line in enumerate(lines) if line.startswith('< {"t": "welcome"'))
    sent = lines.index('> {"t": "echo", "body": "hi"}')
    assert welcome < sent, lines
    assert '< {"t": "echo", "body": "hi"}' in lines, lines


@pytest.mark.timeout(60)
async def test_a_refused_credential_ends_the_client_at_once() -> None:
    """A 401 will not turn into a 200 by asking again: the client says why and exits 1
    instead of backing off ten times."""
    settings = cluster_settings(nodes=1)
    async with LocalCluster(settings, scheduler=True):
        server = f"http://127.0.0.1:{settings.scheduler.port}"
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.cli", "connect", "--uid", "erin", "--server",
            server, "--token", token("mallory"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(client.communicate(), 20)
    text = out.decode()
    assert client.returncode == 1, text
    assert "HTTP 403: the credential is for another uid; giving up" in text, text
    assert "again in" not in text, text
