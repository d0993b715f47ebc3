"""control/launch.py alone owns backends: a part given none opens and closes its own
(the store opened before the component starts, both closed after it stops); a part given
shared ones (imctl up, in-process test clusters) leaves them alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import web

from control import launch
from control.common.kv import KeyValueStore
from control.common.kv.embedded import EmbeddedKV
from control.launch import Part, access_part, controller_part, make_presence, scheduler_part
from control.presence.cluster import PresenceCluster
from control.settings import Settings
from tests.cluster import cluster_settings


class Recorded(EmbeddedKV):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def connect(self) -> None:
        self.log.append("kv.connect")
        await super().connect()

    async def close(self) -> None:
        self.log.append("kv.close")
        await super().close()


def recorded_presence(settings: Settings, log: list[str]) -> PresenceCluster:
    presence = make_presence(settings)
    close = presence.close

    async def recorded_close() -> None:
        log.append("presence.close")
        await close()

    presence.close = recorded_close  # type: ignore[method-assign]
    return presence


PARTS: dict[str, Callable[..., Part]] = {
    "scheduler": scheduler_part,
    "access": lambda s, kv=None, presence=None: access_part(s, "n0", kv, presence),
    "controller": controller_part,
}


async def cycle(part: Part, log: list[str]) -> None:
    async def mark(app: web.Application):  # type: ignore[no-untyped-def]
        log.append("component up")
        yield
        log.append("component down")

    part.app.cleanup_ctx.append(mark)
    runner = web.AppRunner(part.app, handle_signals=False)
    await runner.setup()
    if part.node is not None:
        await part.node.stop(0)
    await runner.cleanup()


@pytest.mark.parametrize("name", sorted(PARTS))
async def test_a_part_given_no_backends_owns_its_own(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = cluster_settings(nodes=1)
    log: list[str] = []
    monkeypatch.setattr(launch, "make_kv", lambda cluster: Recorded(log))
    monkeypatch.setattr(launch, "make_presence", lambda s, kv=None: recorded_presence(s, log))
    await cycle(PARTS[name](settings), log)
    assert log == [
        "kv.connect",
        "component up",
        "component down",
        "presence.close",
        "kv.close",
    ]


@pytest.mark.parametrize("name", sorted(PARTS))
async def test_a_part_given_shared_backends_leaves_them_open(name: str) -> None:
    settings = cluster_settings(nodes=1)
    log: list[str] = []
    kv: KeyValueStore = Recorded(log)
    presence = recorded_presence(settings, log)
    await kv.connect()
    try:
        await cycle(PARTS[name](settings, kv=kv, presence=presence), log)
        assert log == ["kv.connect", "component up", "component down"]
    finally:
        await presence.close()
        await kv.close()
