"""Connections follow the release: real access nodes and a scheduler in-process, clients
placed through the scheduler as apps are, a release changed in the store."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import pytest

from control.gray.model import Release, Target
from control.gray.store import ReleaseStore
from control.testing import until
from tests.cluster import LocalCluster, cluster_settings
from tests.servers import free_port
from tests.tokens import as_user

CANARY = {"n0", "n1"}
RATE = 20.0  # reconnect frames per second per node


def settings() -> Any:
    nodes = [
        {
            "id": f"n{i}",
            "region": "north",
            "zone": "a",
            "port": free_port(),
            "capacity": 5000,
            "pool": "canary" if f"n{i}" in CANARY else "default",
        }
        for i in range(4)
    ]
    return cluster_settings(
        # Clients here do not ping: a 9 s idle cutoff outlasts each test's waits.
        heartbeat={"interval_s": 3, "misses": 3},
        access={
            "nodes": nodes,
            "drain_s": 0.5,
            "drain_max_rate": RATE,
            "reconnect_grace_s": 0.5,
        },
    )


async def ask(c: LocalCluster, http: aiohttp.ClientSession, uid: str) -> dict[str, Any]:
    url = (
        f"http://127.0.0.1:{c.settings.scheduler.port}/v1/endpoint"
        f"?uid={uid}&device=phone&platform=ios&version=1.0&region=north"
    )
    async with http.get(url, headers=as_user(uid)) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def connect(http: aiohttp.ClientSession, answer: dict[str, Any]) -> Any:
    url = f"{answer['endpoint']}?ticket={answer['ticket']}&platform=ios&version=1.0"
    ws = await http.ws_connect(url)
    assert (await ws.receive_json(timeout=5))["t"] == "welcome"
    return ws


async def placed(
    c: LocalCluster, http: aiohttp.ClientSession, release: Release, users: int
) -> dict[str, tuple[str, Any]]:
    store = ReleaseStore(c.kv, c.settings.cluster.prefix)
    await store.create(release, by="test")
    # The scheduler routes by it once its mirror has it.
    probe = next(f"u{i}" for i in range(1000) if release.rule.matches(*_ctx(f"u{i}")))
    await until(lambda: _track(c, http, probe), within=10)
    out: dict[str, tuple[str, Any]] = {}
    for i in range(users):
        answer = await ask(c, http, f"u{i}")
        out[f"u{i}"] = (answer["node"], await connect(http, answer))
    return out


def _ctx(uid: str) -> tuple[Any, int]:
    from control.gray.model import UserContext, Version, hash64

    return UserContext(uid, "ios", Version.parse("1.0"), "north"), hash64(uid)


async def _track(c: LocalCluster, http: aiohttp.ClientSession, uid: str) -> bool:
    return (await ask(c, http, uid))["node"] in CANARY


@pytest.mark.timeout(60)
async def test_rollback_moves_every_canary_session_at_a_bounded_rate(
    http: aiohttp.ClientSession,
) -> None:
    async with LocalCluster(settings(), scheduler=True) as c:
        release = Release(name="r1", target=Target(pool="canary"), percent=40)
        clients = await placed(c, http, release, 80)
        canary = {uid for uid, (node, _) in clients.items() if node in CANARY}
        assert 15 <= len(canary) <= 50, len(canary)
        # The status counts each track: connections from the load reports, online
        # entries from presence.
        url = f"http://127.0.0.1:{c.settings.scheduler.port}/v1/gray/releases/r1"
        wanted = {
            "canary": {"nodes": 2, "connections": len(canary), "online": len(canary)},
            "stable": {"nodes": 2, "connections": 80 - len(canary), "online": 80 - len(canary)},
            "other": {"nodes": 0, "connections": 0, "online": 0},
            "stable_target": None,
        }

        async def counted() -> bool:
            async with http.get(url) as resp:
                return bool((await resp.json())["tracks"] == wanted)

        await until(counted, within=10, what="per-track counts")
        told: dict[str, float] = {}
        landed: dict[str, str] = {}

        async def follow(uid: str) -> None:
            ws = clients[uid][1]
            frame = await ws.receive_json(timeout=20)
            assert frame == {"t": "reconnect", "after_ms": frame["after_ms"], "reason": "rollback"}
            told[uid] = time.monotonic()
            await asyncio.sleep(frame["after_ms"] / 1000)
            await ws.close()
            for _ in range(50):  # the scheduler may not have seen the rollback yet
                answer = await ask(c, http, uid)
                if answer["node"] not in CANARY:
                    break
                await asyncio.sleep(0.1)
            landed[uid] = answer["node"]
            await (await connect(http, answer)).close()

        store = ReleaseStore(c.kv, c.settings.cluster.prefix)
        stored = await store.get("r1")
        assert stored is not None
        back = dataclasses.replace(release, percent=0, state="rolled_back")
        start = time.monotonic()
        await store.change("r1", stored.revision, back, action="rollback", by="test")
        await asyncio.wait_for(asyncio.gather(*(follow(uid) for uid in canary)), 30)
        assert set(told) == canary and set(landed) == canary
        assert not set(landed.values()) & CANARY
        # Bounded: no node tells more than RATE a second (the two canary nodes walk apart).
        for node in CANARY:
            mine = sorted(t for uid, t in told.items() if clients[uid][0] == node)
            if len(mine) > 2:
                assert (mine[-1] - mine[0]) >= (len(mine) - 1) / RATE * 0.8, (node, mine)
        assert max(told.values()) - start < 10
        # Nobody on a stable node was told anything.
        for node, ws in clients.values():
            if node not in CANARY:
                assert ws.closed is False
                with pytest.raises(asyncio.TimeoutError):
                    await ws.receive_json(timeout=0.01)
        moved = sum(c.node(n).metrics.moved.value(n, "rollback") for n in CANARY)
        assert moved == len(canary)
        for _, ws in clients.values():
            await ws.close()


@pytest.mark.timeout(60)
async def test_raising_the_percent_moves_nobody_lowering_it_moves_the_users_outside(
    http: aiohttp.ClientSession,
) -> None:
    async with LocalCluster(settings(), scheduler=True) as c:
        release = Release(name="r1", target=Target(pool="canary"), percent=10)
        clients = await placed(c, http, release, 80)
        canary = {uid for uid, (node, _) in clients.items() if node in CANARY}
        assert canary
        store = ReleaseStore(c.kv, c.settings.cluster.prefix)
        stored = await store.get("r1")
        assert stored is not None
        up = dataclasses.replace(release, percent=25)
        stored = await store.change("r1", stored.revision, up, action="set-percent", by="t")
        for n in c.settings.access.nodes:
            follower = c.node(n.id).follower
            await until(lambda f=follower: f.releases["r1"].percent == 25, within=10)  # type: ignore[misc]
            assert not follower.moving
        for _, ws in clients.values():
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive_json(timeout=0.01)
        # Down to 0 (still running): every canary user is now outside.
        down = dataclasses.replace(up, percent=0)
        await store.change("r1", stored.revision, down, action="set-percent", by="t")
        frames = await asyncio.gather(
            *(clients[uid][1].receive_json(timeout=10) for uid in sorted(canary))
        )
        assert {f["reason"] for f in frames} == {"rollback"}
        for _, ws in clients.values():
            await ws.close()


@pytest.mark.timeout(60)
async def test_promote_makes_the_target_stable_and_retires_the_old_nodes_at_the_rate(
    http: aiohttp.ClientSession,
) -> None:
    async with LocalCluster(settings(), scheduler=True) as c:
        release = Release(name="r1", target=Target(pool="canary"), percent=50)
        clients = await placed(c, http, release, 40)
        stable = {uid for uid, (node, _) in clients.items() if node not in CANARY}
        assert len(stable) > 4
        store = ReleaseStore(c.kv, c.settings.cluster.prefix)
        stored = await store.get("r1")
        assert stored is not None
        done = dataclasses.replace(release, percent=100, state="promoted")
        promoted = await store.change("r1", stored.revision, done, action="promote", by="t")
        await store.stable.hand_over(done, promoted.revision, by="t")
        told: dict[str, float] = {}

        async def told_at(uid: str) -> dict[str, Any]:
            frame: dict[str, Any] = await clients[uid][1].receive_json(timeout=10)
            told[uid] = time.monotonic()
            return frame

        frames = await asyncio.gather(*(told_at(uid) for uid in sorted(stable)))
        assert {(f["t"], f["reason"]) for f in frames} == {("reconnect", "promote")}
        for node in ("n2", "n3"):  # each old node tells at most RATE a second
            mine = sorted(t for uid, t in told.items() if clients[uid][0] == node)
            if len(mine) > 2:
                assert (mine[-1] - mine[0]) >= (len(mine) - 1) / RATE * 0.8, (node, mine)
        assert {c.node(n).state for n in ("n2", "n3")} == {"draining"}
        assert {c.node(n).state for n in CANARY} == {"up"}
        # The old nodes come back (their drains cancelled): the stable version is the
        # promoted pool now, so nobody is sent to them, not even users never in the release.
        for n in ("n2", "n3"):
            c.node(n).undrain()

        async def back_up() -> bool:  # as the scheduler sees them
            url = f"http://127.0.0.1:{c.settings.scheduler.port}/v1/nodes"
            async with http.get(url) as resp:
                nodes = {n["id"]: n for n in (await resp.json())["nodes"]}
            return all(nodes[n]["state"] == "up" for n in ("n2", "n3"))

        await until(back_up, within=10)
        never = [f"v{i}" for i in range(400) if not release.rule.matches(*_ctx(f"v{i}"))][:40]
        assert len(never) == 40
        for uid in never:
            assert (await ask(c, http, uid))["node"] in CANARY, uid
        for _, ws in clients.values():
            await ws.close()


@pytest.mark.timeout(60)
async def test_rollback_over_spreads_the_moves_over_its_window(
    http: aiohttp.ClientSession,
) -> None:
    """``rollback --over W``: each canary node spreads its clients' reconnect frames over
    W (not its own 0.5 s drain window): all told within W, and no faster than W allows."""
    async with LocalCluster(settings(), scheduler=True) as c:
        store = ReleaseStore(c.kv, c.settings.cluster.prefix)
        for name, over in (("r1", 2.0), ("r2", 4.0)):
            release = Release(name=name, target=Target(pool="canary"), percent=40)
            clients = await placed(c, http, release, 60)
            canary = {uid for uid, (node, _) in clients.items() if node in CANARY}
            assert len(canary) >= 10, len(canary)
            stored = await store.get(name)
            assert stored is not None
            back = dataclasses.replace(release, percent=0, state="rolled_back")
            back = dataclasses.replace(back, rollback_over_s=over)
            told: dict[str, float] = {}

            async def told_at(
                uid: str, ws: Any, over: float = over, told: dict[str, float] = told
            ) -> None:
                for _ in range(int((over + 10) / 0.5)):  # pinging: the idle sweep is 3 s
                    await ws.send_json({"t": "ping"})
                    until_ = time.monotonic() + 0.5
                    while (left := until_ - time.monotonic()) > 0:
                        try:
                            frame = await ws.receive_json(timeout=left)
                        except TimeoutError:
                            break
                        if frame["t"] == "reconnect":
                            assert frame["reason"] == "rollback"
                            told[uid] = time.monotonic()
                            return

            start = time.monotonic()
            await store.change(name, stored.revision, back, action="rollback", by="t")
            await asyncio.gather(*(told_at(uid, clients[uid][1]) for uid in canary))
            assert max(told.values()) - start < over + 1.0, (over, told)  # within the window
            for node in CANARY:  # and spread over it: each node's n at over/n apart
                mine = sorted(t for uid, t in told.items() if clients[uid][0] == node)
                if len(mine) > 2:
                    spread = (len(mine) - 1) * over / len(mine)
                    assert mine[-1] - mine[0] >= spread * 0.8, (node, over, mine)
            for _, ws in clients.values():
                await ws.close()
            await store.delete(name, (await store.get(name)).revision, by="t")  # type: ignore[union-attr]
