"""The node registry over both backends: records on leases, mirrors, self-registration."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from control.common.kv import KeyValueStore
from control.common.registry import NodeRecord, Registry
from control.testing import until


def node(node_id: str, **kw: object) -> NodeRecord:
    base: dict[str, object] = {"endpoint": f"ws://127.0.0.1/{node_id}", "region": "r1"}
    base.update(kw)
    return NodeRecord(id=node_id, **base)  # type: ignore[arg-type]


async def test_register_list_and_publish(kv: KeyValueStore, prefix: str) -> None:
    registry = Registry(kv, prefix)
    reg = await registry.register(node("n1", conns=1), ttl=5)
    nodes, _ = await registry.list()
    assert nodes["n1"].conns == 1 and nodes["n1"].reported_at > 0
    assert not await reg.publish(node("n1", conns=1))  # unchanged: nothing written
    assert await reg.publish(node("n1", conns=7, state="draining"))
    nodes, _ = await registry.list()
    assert (nodes["n1"].conns, nodes["n1"].state) == (7, "draining")
    await reg.close()
    nodes, _ = await registry.list()
    assert "n1" not in nodes


async def test_mirror_follows_changes_and_lease_expiry(kv: KeyValueStore, prefix: str) -> None:
    registry = Registry(kv, prefix)
    views: list[Mapping[str, NodeRecord]] = []
    mirror = registry.mirror(views.append, verify_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(mirror.run(stop))
    try:
        await asyncio.wait_for(mirror.synced.wait(), 5)
        keep = await registry.register(node("keep"), ttl=5)
        await registry.register(node("dies"), ttl=1)  # never refreshed
        await until(lambda: {"keep", "dies"} <= set(mirror.items))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while "dies" in mirror.items:
            await keep.run_once()
            assert loop.time() - started < 4, "expired node still mirrored"
            await asyncio.sleep(0.1)
        assert "keep" in mirror.items
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_unreadable_record_is_skipped(kv: KeyValueStore, prefix: str) -> None:
    registry = Registry(kv, prefix)
    await kv.put(registry.key("broken"), b"{not json")
    await kv.put(registry.key("wrong-id"), node("other").to_json())
    await registry.register(node("good"), ttl=5)
    nodes, _ = await registry.list()
    assert set(nodes) == {"good"}


async def test_lost_lease_registers_again(kv: KeyValueStore, prefix: str) -> None:
    registry = Registry(kv, prefix)
    reg = await registry.register(node("n1"), ttl=5)
    await kv.revoke_lease(reg.lease)  # as after a long etcd outage
    message = await reg.run_once()
    assert "registered again" in message
    nodes, _ = await registry.list()
    assert "n1" in nodes
    entry = await kv.get(registry.key("n1"))
    assert entry is not None and entry.lease == reg.lease
