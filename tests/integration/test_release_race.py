"""Two operators racing on the same release against a real etcd: in every round both change
it from the same revision, exactly one wins, the other gets the conflict naming the
winner's revision, and the audit trail shows exactly one change per round."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from control.common.kv.etcd import EtcdKV
from control.gray.model import Release, Target
from control.gray.store import ReleaseConflict, ReleaseStore, StoredRelease
from tests.servers import EtcdServer

ROUNDS = 40


class RacingKV(EtcdKV):
    """An operator's own etcd client whose release swap waits at the round's barrier, so
    both operators have read and checked the same revision before either swaps: the race
    is decided by etcd, not by who ran first here."""

    barrier: asyncio.Barrier | None = None

    async def compare_and_swap(
        self, key: str, value: bytes, expected: int, lease: int = 0
    ) -> tuple[bool, int]:
        if self.barrier is not None and "/gray/" in key:
            async with asyncio.timeout(5):
                await self.barrier.wait()
        return await super().compare_and_swap(key, value, expected, lease)


@pytest.fixture
async def operators(etcd_server: EtcdServer) -> AsyncIterator[list[RacingKV]]:
    clients = [RacingKV(etcd_server.endpoint, timeout_s=5) for _ in range(2)]
    for client in clients:
        await client.connect()
    yield clients
    for client in clients:
        await client.close()


async def test_two_operators_racing(operators: list[RacingKV], prefix: str) -> None:
    stores = [ReleaseStore(kv, prefix) for kv in operators]
    names = ["alice", "bob"]
    release = Release(name="race", target=Target(pool="canary"), percent=1)
    current = await stores[0].create(release, by="setup")
    wins = {"alice": 0, "bob": 0}
    winners: list[tuple[str, StoredRelease]] = []
    for n in range(ROUNDS):
        barrier = asyncio.Barrier(2)
        for kv in operators:
            kv.barrier = barrier
        # Each operator sets its own percent, so the trail tells whose change won.
        results = await asyncio.gather(
            *(
                store.change(
                    "race",
                    current.revision,
                    dataclasses.replace(release, percent=(2 * n + i + 2) % 100),
                    action="set-percent",
                    by=who,
                    why=f"round {n}",
                )
                for i, (store, who) in enumerate(zip(stores, names, strict=True))
            ),
            return_exceptions=True,
        )
        won = [
            (who, r)
            for who, r in zip(names, results, strict=True)
            if not isinstance(r, BaseException)
        ]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1, results
        who, stored = won[0]
        assert isinstance(lost[0], ReleaseConflict), lost[0]
        assert (lost[0].expected, lost[0].current) == (current.revision, stored.revision)
        assert f"revision {stored.revision}" in str(lost[0])
        wins[who] += 1
        winners.append((who, stored))
        current = stored
    for kv in operators:
        kv.barrier = None
    assert await stores[1].get("race") == current
    trail = await stores[1].history("race", limit=ROUNDS + 1)
    assert [r.action for r in trail] == ["create"] + ["set-percent"] * ROUNDS
    for record, (who, stored), previous in zip(trail[1:], winners, trail[:-1], strict=True):
        assert (record.by, record.revision) == (who, stored.revision)
        assert record.from_revision == previous.revision
        assert record.changes["percent"][1] == stored.release.percent
    assert all(wins.values()), wins  # both sides won some rounds: the race was real
