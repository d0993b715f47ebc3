"""imctl_access_heartbeat_lag_seconds: the age of the heartbeats waiting for presence,
0 when none wait, growing while presence refuses them (the heartbeat-flush-lag alert)."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from control.access.heartbeat import HeartbeatBatch
from control.access.metrics import AccessMetrics
from control.access.session import Roster
from control.common.errors import BackendUnavailable


class Presence:
    def __init__(self) -> None:
        self.down = False

    async def touch(self, batch: Iterable[Any]) -> list[Any]:
        if self.down:
            raise BackendUnavailable("shard s0 is down")
        return []


def lag(metrics: AccessMetrics) -> float | None:
    return metrics.registry.get_sample_value("imctl_access_heartbeat_lag_seconds", {"node": "n0"})


async def test_lag_grows_while_presence_refuses_and_clears_on_a_flush() -> None:
    metrics, presence, now = AccessMetrics("n0"), Presence(), [100.0]
    fake: Any = presence
    batch = HeartbeatBatch("n0", fake, Roster(), lambda s: fake, metrics, 0.5, lambda: now[0])
    session: Any = SimpleNamespace(uid="u", device="d", conn="c1")
    assert lag(metrics) == 0.0  # nothing waiting
    batch.touch(session)
    await batch.flush_once()
    assert lag(metrics) == 0.0  # flushed
    presence.down = True
    batch.touch(session)
    await batch.flush_once()  # refused: kept
    now[0] += 20
    assert lag(metrics) == 20.0
    await batch.flush_once()  # refused again
    now[0] += 10
    assert lag(metrics) == 30.0
    presence.down = False
    await batch.flush_once()
    assert lag(metrics) == 0.0
