"""The push API: resolve users with one batch ``locate``, group them by node, deliver
through each node's authenticated internal endpoint concurrently, and report who was
offline instead of dropping them silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from control.access.core import PushResult
from control.presence.cluster import PresenceCluster

log = logging.getLogger(__name__)


class Pusher:
    def __init__(
        self,
        presence: PresenceCluster,
        node_url: Callable[[str], str | None],
        token: str,
        timeout_s: float = 2.0,
    ) -> None:
        self.presence = presence
        self.node_url = node_url
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=self.timeout,
                headers={"Authorization": f"Bearer {self.token}"},
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._http

    async def push(self, uids: Sequence[str], payload: Mapping[str, Any]) -> PushResult:
        wanted = list(dict.fromkeys(uids))
        found = await self.presence.locate(wanted)
        by_node = found.by_node()
        present = found.uids()
        offline = {u for u in wanted if u not in present}
        delivered = 0
        failed_nodes: list[str] = []
        failed: set[str] = set()
        results = await asyncio.gather(
            *(self._deliver(node, sorted(group), payload) for node, group in by_node.items())
        )
        reached: set[str] = set()
        for node, (ok, count, missing) in zip(by_node, results, strict=True):
            if not ok:
                failed_nodes.append(node)
                failed |= by_node[node]
                continue
            delivered += count
            reached |= by_node[node] - set(missing)
        # A user counts as offline when no node that answered holds it any more.
        offline |= {u for node in by_node for u in by_node[node]} - reached - failed
        return PushResult(
            delivered,
            tuple(sorted(offline)),
            tuple(sorted(failed - reached)),
            tuple(sorted(failed_nodes)),
        )

    async def _deliver(
        self, node: str, uids: list[str], payload: Mapping[str, Any]
    ) -> tuple[bool, int, list[str]]:
        body = await self.call(node, "/internal/push", {"uids": uids, "payload": payload})
        if body is None:
            return False, 0, []
        return True, int(body.get("delivered", 0)), list(body.get("missing", []))

    async def call(self, node: str, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST to a node's internal API with the internal token; None when it failed."""
        base = self.node_url(node)
        if base is None:
            log.warning("internal call %s: node %s is not in the registry", path, node)
            return None
        try:
            async with self._session().post(f"{base}{path}", json=body) as resp:
                if resp.status != 200:
                    log.warning("internal call %s on %s: HTTP %d", path, node, resp.status)
                    return None
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            log.warning("internal call %s on %s failed: %r", path, node, exc)
            return None
        return data if isinstance(data, dict) else None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
