"""A gray release at the issue's size, with real processes (etcd, Redis, a scheduler and four
access nodes: two of the canary version, two stable), driven as SREs and apps drive it:
the admin API and `imctl gray` for the release, `/v1/endpoint` and WebSockets for users.

- At 10 %, 5,000 users asking the scheduler land 10 ± 1 % on the canary nodes.
- Raising 10 % -> 25 % sends no reconnect frame to anyone already placed.
- A rollback `--over` a window moves every canary connection to the stable nodes within it,
  none lost, each client following its reconnect frame, at no more than the drain rate.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.gray.model import Release, Target, UserContext, Version
from control.testing import EtcdServer, RedisServer, until
from tests.e2e.system import Cluster, get, ready

pytestmark = pytest.mark.e2e
CANARY = ("n0", "n1")  # version 2.0
STABLE = ("n2", "n3")  # version 1.0
USERS = 5_000
STABLE_CLIENTS = 300  # stable users connected besides the canary ones
RATE = 100.0  # access.drain_max_rate: reconnect frames a second per node
OVER = 4.0  # the rollback's window
ASKING = 50  # concurrent requests to the scheduler
RELEASE = {"name": "r1", "target": {"version": "2.0"}, "percent": 10}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    redis_servers: list[RedisServer],
) -> Iterator[Cluster]:
    nodes = [
        {"id": n, "region": "north", "zone": "a", "version": v, "capacity": 20_000}
        for n, v in (("n0", "2.0"), ("n1", "2.0"), ("n2", "1.0"), ("n3", "1.0"))
    ]
    c = Cluster(
        tmp_path_factory.mktemp("gray"),
        etcd_server,
        redis_servers,
        nodes=nodes,
        # Clients here do not ping: an idle cutoff (30 s) beyond the module's run.
        heartbeat={"interval_s": 10, "misses": 3},
        access={"drain_max_rate": RATE, "drain_s": 1, "reconnect_grace_s": 3},
    )
    try:
        c.start(*CANARY, *STABLE, "scheduler")
        yield c
    finally:
        c.stop_all()


def user(uid: str) -> UserContext:
    return UserContext(uid, "ios", Version.parse("1.0"), "north")


async def ask(http: aiohttp.ClientSession, c: Cluster, uid: str) -> dict[str, Any]:
    url = f"{c.url}/v1/endpoint?uid={uid}&device=phone&platform=ios&version=1.0&region=north"
    answer: dict[str, Any] = await get(http, url, uid)
    assert "node" in answer, answer
    return answer


async def ask_all(http: aiohttp.ClientSession, c: Cluster, uids: list[str]) -> dict[str, Any]:
    """Every uid's answer, ``ASKING`` requests at a time."""
    gate = asyncio.Semaphore(ASKING)

    async def one(uid: str) -> tuple[str, Any]:
        async with gate:
            return uid, await ask(http, c, uid)

    return dict(await asyncio.gather(*(one(u) for u in uids)))


async def admin(http: aiohttp.ClientSession, c: Cluster, method: str, path: str, body: Any) -> Any:
    async with http.request(method, f"{c.url}{path}", json=body) as resp:
        answer = await resp.json()
        assert resp.status in (200, 201), answer
        return answer


async def serving(http: aiohttp.ClientSession, c: Cluster, revision: int) -> None:
    """Until the scheduler serves the release at ``revision``."""

    async def served() -> bool:
        spread = (await get(http, f"{c.url}/v1/gray/propagation"))["releases"].get("r1")
        return spread is not None and spread["revision"] == revision and not spread["lagging"]

    await until(served, 10, f"the scheduler serving revision {revision}")


async def connect(http: aiohttp.ClientSession, answer: dict[str, Any]) -> Any:
    url = f"{answer['endpoint']}?ticket={answer['ticket']}&platform=ios&version=1.0"
    ws = await http.ws_connect(url)
    assert (await ws.receive_json(timeout=10))["t"] == "welcome"
    return ws


async def moved_total(http: aiohttp.ClientSession, c: Cluster) -> float:
    """Connections moved for any reason, over every node (their /metrics)."""
    total = 0.0
    for node in (*CANARY, *STABLE):
        async with http.get(f"http://127.0.0.1:{c.ports[node]}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("imctl_access_moved_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(60)
async def test_ten_percent_of_5000_users_land_on_the_canary_nodes(
    cluster: Cluster, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = cluster
    await ready(http, c, {*CANARY, *STABLE})
    path = tmp_path / "r1.json"
    path.write_text(json.dumps(RELEASE))
    created = c.imctl("gray", "create", "-f", str(path), "-o", "json")
    assert created.returncode == 0, created.stderr
    await serving(http, c, json.loads(created.stdout)["revision"])
    answers = await ask_all(http, c, [f"u{i}" for i in range(USERS)])
    on_canary = {u for u, a in answers.items() if a["node"] in CANARY}
    assert 0.09 * USERS <= len(on_canary) <= 0.11 * USERS, len(on_canary)
    # Exactly the users the release's bucket takes (sticky), and no stable user on canary.
    rule = Release(name="r1", target=Target(version="2.0"), percent=10)
    assert on_canary == {u for u in answers if rule.matches(user(u))}


@pytest.mark.timeout(60)
async def test_raising_moves_nobody_and_a_rollback_moves_every_canary_client_in_its_window(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    c = cluster
    rule = Release(name="r1", target=Target(version="2.0"), percent=10)
    uids = [f"u{i}" for i in range(USERS)]
    canary_uids = [u for u in uids if rule.matches(user(u))]
    stable_uids = [u for u in uids if not rule.matches(user(u))][:STABLE_CLIENTS]
    answers = await ask_all(http, c, canary_uids + stable_uids)
    gate = asyncio.Semaphore(ASKING)

    async def open_one(uid: str) -> tuple[str, Any]:
        async with gate:
            return uid, await connect(http, answers[uid])

    sockets = dict(await asyncio.gather(*(open_one(u) for u in answers)))
    try:
        assert {answers[u]["node"] for u in canary_uids} <= set(CANARY)
        assert {answers[u]["node"] for u in stable_uids} <= set(STABLE)

        # imctl gray status: each track's connections (the nodes' load reports) and
        # online entries (presence) as placed.
        wanted = {"nodes": 2, "connections": len(canary_uids), "online": len(canary_uids)}

        async def counted() -> bool:
            tracks = (await get(http, f"{c.url}/v1/gray/releases/r1"))["tracks"]
            return bool(tracks["canary"] == wanted and tracks["stable"]["online"] == 300)

        await until(counted, 10, "per-track counts in the status")
        status = c.imctl("gray", "status", "r1", "-o", "json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["tracks"]["canary"] == wanted

        # 10 % -> 25 %: nobody placed gets a frame.
        raised = await admin(http, c, "POST", "/v1/gray/releases/r1/set-percent", {"percent": 25})
        await serving(http, c, raised["revision"])
        quiet = await asyncio.gather(
            *(ws.receive_json(timeout=1.0) for ws in sockets.values()), return_exceptions=True
        )
        assert all(isinstance(r, TimeoutError) for r in quiet), [
            r for r in quiet if not isinstance(r, TimeoutError)
        ][:3]
        assert await moved_total(http, c) == 0

        # Rollback over OVER seconds: every canary client follows its frame to stable.
        told: dict[str, float] = {}
        arrived: dict[str, float] = {}
        landed: dict[str, str] = {}

        async def follow(uid: str) -> None:
            ws = sockets[uid]
            frame = await ws.receive_json(timeout=OVER + 15)
            assert (frame["t"], frame["reason"]) == ("reconnect", "rollback"), frame
            told[uid] = time.monotonic()
            await asyncio.sleep(frame["after_ms"] / 1000)
            await ws.close()
            for _ in range(50):  # bounded: the scheduler may not have the rollback yet
                answer = await ask(http, c, uid)
                if answer["node"] not in CANARY:
                    break
                await asyncio.sleep(0.1)
            sockets[uid] = await connect(http, answer)
            arrived[uid] = time.monotonic()
            landed[uid] = answer["node"]

        start = time.monotonic()
        body = {"over_s": OVER, "reason": "e2e"}
        await admin(http, c, "POST", "/v1/gray/releases/r1/rollback", body)
        await asyncio.wait_for(asyncio.gather(*(follow(u) for u in canary_uids)), OVER + 30)
        # None lost: every canary client is back, on a stable node.
        assert set(landed) == set(canary_uids)
        assert set(landed.values()) <= set(STABLE)
        # Within the window (each node tells its last at most OVER in; then the jitter,
        # the scheduler and the handshake).
        assert max(told.values()) - start <= OVER + 1.5, max(told.values()) - start
        assert max(arrived.values()) - start <= OVER + 3.0
        # The rate: in no second are more clients told than the canary nodes may send. Read
        # when each frame arrived, not when its client landed: arrivals add the scheduler and
        # the handshake, and bunched up (315 in a second) behind this test's own loop on a
        # loaded machine; a quarter over the bound is that loop's lag, all 500 at once is not.
        times = sorted(told.values())
        bound = len(CANARY) * RATE
        peak = max(sum(1 for t in times[i:] if t < first + 1.0) for i, first in enumerate(times))
        assert peak <= bound * 1.25, (peak, bound)
        # ... and they were spread over the window, not sent at once.
        assert max(told.values()) - min(told.values()) >= OVER * 0.7
        # The stable clients were never told anything.
        for uid in stable_uids:
            with pytest.raises(TimeoutError):
                await sockets[uid].receive_json(timeout=0.01)

        async def everyone_on_stable() -> bool:
            counts = (await get(http, f"{c.url}/v1/presence/count?by=node"))["counts"]
            on_stable = sum(counts.get(n, 0) for n in STABLE)
            return not any(counts.get(n) for n in CANARY) and on_stable == len(answers)

        await until(everyone_on_stable, 10, "every client online on a stable node")
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets.values()))
