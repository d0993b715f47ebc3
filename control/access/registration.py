"""The node's place in the registry: its record on its lease, the load reports, and the
peers it follows (their internal URLs, for kicks and pushes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from control.access.config import NodeConfig
from control.common.errors import BackendUnavailable
from control.common.kv import KeyValueStore
from control.common.mirror import PrefixMirror
from control.common.registry import NodeRecord, Registration, Registry
from control.common.tasks import pause

log = logging.getLogger(__name__)


class Membership:
    """Builds the node's record from its live load, registers it on a lease, writes a load
    report every ``report_interval_s`` and mirrors the other nodes' records."""

    def __init__(
        self,
        config: NodeConfig,
        kv: KeyValueStore,
        epoch: int,
        conns: Callable[[], int],
        draining: Callable[[], bool],
    ) -> None:
        self.config = config
        self.id = config.id
        self.epoch = epoch
        self.conns = conns
        self.draining = draining
        self.registry = Registry(kv, config.prefix)
        self.registration: Registration | None = None
        self.peers: dict[str, NodeRecord] = {}
        self.mirror: PrefixMirror[NodeRecord] | None = None
        self.leaving = False  # our record going away is then expected
        self._missing = False  # our record vanished from the mirror; say so when rewritten

    def record(self) -> NodeRecord:
        c = self.config.node
        return NodeRecord(
            id=c.id,
            endpoint=self.config.endpoint,
            region=c.region,
            zone=c.zone,
            pool=c.pool,
            version=c.version,
            capacity=c.capacity,
            conns=self.conns(),
            state="draining" if self.draining() else "up",
            epoch=self.epoch,
            weight=c.weight,
            internal=self.config.internal_url,
            proxy=c.proxy_address(),
        )

    def peer_url(self, node_id: str) -> str | None:
        if node_id == self.id:
            return self.config.internal_url
        peer = self.peers.get(node_id)
        return peer.internal if peer is not None and peer.internal else None

    async def register(self) -> Registration:
        """Grant the lease, publish the record on it, and build the peers' mirror (the
        caller runs both as supervised tasks)."""
        registry = self.config.registry
        self.registration = await self.registry.register(self.record(), registry.lease_ttl_s)
        self.mirror = self.registry.mirror(self._on_peers, verify_s=registry.verify_s)
        return self.registration

    def _on_peers(self, nodes: Mapping[str, NodeRecord]) -> None:
        self.peers = dict(nodes)
        if self.id not in nodes and not self.leaving:
            self._missing = True

    async def report_once(self, force: bool = False) -> bool:
        if self.registration is None:
            return False
        return await self.registration.publish(self.record(), force=force)

    async def report_tick(self) -> None:
        """One load report, written changed or not: the report's age (REPORTED in `imctl
        nodes`, the scheduler's pending window) then says the node is alive and its load is
        current, never "110s ago" for a healthy idle node. It also writes back a record
        deleted by hand."""
        missing, self._missing = self._missing, False
        try:
            if await self.report_once(force=True) and missing:
                log.warning("%s: own record was gone from the registry; wrote it again", self.id)
        except BackendUnavailable as exc:
            self._missing |= missing
            log.warning("%s: load report failed: %s", self.id, exc)

    async def run_reports(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.report_tick()
            await pause(stop, self.config.report_interval_s)

    async def leave(self) -> None:
        """Revoke the lease now, shielded: the node leaves the registry even if shutdown is
        being cancelled."""
        self.leaving = True
        if self.registration is not None:
            await asyncio.shield(self.registration.close())
