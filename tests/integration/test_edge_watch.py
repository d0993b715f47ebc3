"""`imctl lb watch`'s task in one step at a time on an injected clock: changes within the
reload interval are held and loaded together by one reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from control.common.kv.embedded import EmbeddedKV
from control.common.registry import NodeRecord
from control.edge.config import EdgeConfig, EdgeSettings
from control.edge.watch import EdgeWatch


class Master:
    """Stands in for HAProxy's master socket: counts reloads."""

    def __init__(self) -> None:
        self.reloads = 0

    async def reload(self) -> Any:
        self.reloads += 1


def record(i: int) -> NodeRecord:
    endpoint, proxy = f"ws://127.0.0.1:{20000 + i}/ws", f"127.0.0.1:{9100 + i}"
    return NodeRecord(f"n{i}", endpoint, "north", proxy=proxy)


async def test_changes_within_the_interval_are_coalesced(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "haproxy.cfg"
    config = EdgeConfig(EdgeSettings(config_path=str(path), reload_interval_s=5.0))
    master = Master()
    watch = EdgeWatch(config, EmbeddedKV(), master, clock=lambda: now[0])  # type: ignore[arg-type]
    watch.on_nodes({"n0": record(0)})
    assert (await watch.run_once()).startswith("reloaded: routing n0 (port 20000)")
    assert master.reloads == 1 and "node_n0" in path.read_text()
    assert (await watch.run_once()).startswith("unchanged")
    watch.on_nodes({"n0": record(0), "n1": record(1)})
    now[0] += 1
    assert (await watch.run_once()).startswith("change held 4.0s")
    watch.on_nodes({"n0": record(0), "n1": record(1), "n2": record(2)})
    now[0] += 2
    assert (await watch.run_once()).startswith("change held 2.0s")
    assert master.reloads == 1 and "node_n1" not in path.read_text()
    now[0] += 2
    said = await watch.run_once()
    assert said.startswith("reloaded: routing n0 (port 20000), n1 (port 20001), n2 (port 20002)")
    assert master.reloads == 2 and "node_n2" in path.read_text()
