"""A replicated ring shard: a shard URL ``redis+sentinel://.../name`` whose master is
killed (kill -9) under load; the sentinels promote its replica, the shard's client follows
the new master, and the access nodes' re-assertion makes presence whole again."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from control.presence.model import Presence
from control.presence.shards import build_cluster
from control.testing import RedisServer, SentinelGroup, until

HEARTBEAT_S = 1.0


def entry(uid: str, conn: str) -> Presence:
    return Presence(uid, "phone", "n1", conn, region="north", platform="ios")


async def test_sentinel_shard_fails_over_under_load(
    sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    plain = RedisServer(tmp_path / "plain")
    plain.start()
    presence = build_cluster(
        [("s0", plain.url, 1), ("s1", sentinel_group.url, 1)],
        "redis",
        timeout_s=60,
        key_prefix=f"t{uuid.uuid4().hex[:6]}:",
        breaker_open_s=0.2,
    )
    online: dict[str, str] = {}
    try:
        for start in range(0, 2_000, 500):
            batch = {f"u{i}": f"c{i}" for i in range(start, start + 500)}
            await asyncio.gather(*(presence.online(entry(u, c)) for u, c in batch.items()))
            online.update(batch)
        on_s1 = [u for u in online if presence.ring.owner(u) == "s1"]
        assert len(on_s1) > 500
        old_port = sentinel_group.master.port

        async def heartbeat() -> None:
            missing = await presence.touch((u, "phone", c) for u, c in online.items())
            await asyncio.gather(*(presence.online(entry(u, c)) for u, _d, c in missing))

        async def whole() -> bool:
            found = await presence.locate(sorted(online))
            return set(found) == set(online) and not found.unknown

        sentinel_group.master.kill()
        t0 = time.monotonic()
        serial = 2_000
        # Load goes on: logins (those routed to s1 fail while it has no master) and beats.
        while sentinel_group.master_port() == old_port:
            serial += 1
            uid, conn = f"u{serial}", f"c{serial}"
            try:
                await presence.online(entry(uid, conn))
                online[uid] = conn
            except Exception:
                pass
            await heartbeat()
            await asyncio.sleep(HEARTBEAT_S / 4)
            assert time.monotonic() - t0 < 30, "the sentinels promoted no replica"
        assert sentinel_group.master_port() == sentinel_group.replica.port

        async def beat_until_whole() -> bool:
            await heartbeat()
            return await whole()

        await until(
            beat_until_whole, 3 * HEARTBEAT_S, "presence whole after the failover", HEARTBEAT_S / 4
        )
        # The shard's client is on the new master: a login to s1 lands there.
        uid = next(f"v{i}" for i in range(1_000) if presence.ring.owner(f"v{i}") == "s1")
        await presence.online(entry(uid, "cv"))
        assert (await presence.locate([uid]))[uid][0].conn == "cv"
        assert (await presence.counts()).total == len(online) + 1
    finally:
        await presence.close()
        plain.stop()
