"""Where the canary analysis gets its numbers (the IO edge of :mod:`control.gray.analysis`).

Which node is canary and which stable comes from the registry's node records (a release's
target selects nodes by pool or version; every other node is stable). The counts come
either from the access nodes' own ``/metrics`` (:class:`NodeMetricsSource`: each sample
keeps every node's counters, a read subtracts the oldest sample inside the window from the
newest), or from a Prometheus server's HTTP API (:class:`PrometheusSource`, ``increase``
over the window) when ``gray.prometheus_url`` is configured. A source that cannot answer
raises :class:`FiguresMissing`: the stepper pauses on it, never rolls back or advances.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from control.common.errors import ImctlError
from control.common.registry import NodeRecord, Registry
from control.gray.analysis import PoolFigures
from control.gray.model import Target

# Handshake results that say nothing about the node's health (the client's share or load).
_NOT_FAILURES = frozenset({"ok", "draining", "full", "rate_limited", "address_rate_limited"})
# Close reasons that are the node's doing or its failure (others: the client left, idled
# out, was kicked or moved, or the node shut down in order).
ABNORMAL_CLOSES = frozenset({"presence_unavailable", "slow_consumer", "abuse", "too_large"})
CORE_ERROR_CODE = "internal"  # a frame the message core failed on (control/access/node.py)
SCRAPE_TIMEOUT_S = 2.0
SAMPLES_KEPT = 4096  # per node: bounded whatever the tick and window


class FiguresMissing(ImctlError):
    """The figures could not be read (a node or Prometheus unreachable, no series)."""


class FiguresSource(Protocol):
    async def sample(self) -> None:
        """Called on every stepper tick (a source that keeps its own history samples)."""

    async def read(self, target: Target, window_s: float) -> tuple[PoolFigures, PoolFigures]:
        """(canary, stable) over the last ``window_s``; FiguresMissing when unreadable."""


def is_canary(target: Target, node: NodeRecord) -> bool:
    return target.selects(node.pool, node.version)


def metrics_url(node: NodeRecord) -> str:
    """The node's /metrics: on its internal base URL, else beside its WebSocket endpoint."""
    if node.internal:
        return node.internal.rstrip("/") + "/metrics"
    scheme, _, rest = node.endpoint.partition("://")
    host = rest.split("/", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}/metrics"


def parse_node_metrics(text: str) -> PoolFigures:
    """One node's cumulative counters from its Prometheus text exposition."""
    counts: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        counts[key] = counts.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "imctl_access_connections":
                add("connections", s.value)
            elif s.name == "imctl_access_handshakes_total":
                add("handshakes", s.value)
                if s.labels.get("result") not in _NOT_FAILURES:
                    add("handshake_failures", s.value)
            elif s.name == "imctl_access_closes_total":
                add("closes", s.value)
                if s.labels.get("reason") in ABNORMAL_CLOSES:
                    add("abnormal_closes", s.value)
            elif s.name == "imctl_access_frames_total":
                add("frames", s.value)
            elif s.name == "imctl_access_frame_errors_total":
                add(
                    "core_errors" if s.labels.get("code") == CORE_ERROR_CODE else "error_frames",
                    s.value,
                )
    return PoolFigures(
        nodes=1,
        connections=int(counts.get("connections", 0)),
        handshakes=counts.get("handshakes", 0.0),
        handshake_failures=counts.get("handshake_failures", 0.0),
        closes=counts.get("closes", 0.0),
        abnormal_closes=counts.get("abnormal_closes", 0.0),
        frames=counts.get("frames", 0.0),
        error_frames=counts.get("error_frames", 0.0),
        core_errors=counts.get("core_errors", 0.0),
    )


def window_delta(samples: Iterable[tuple[float, PoolFigures]], since: float) -> PoolFigures:
    """The newest sample less the oldest one taken at or after ``since``; counters that went
    down (the node restarted in the window) count from the restart."""
    inside = [(at, f) for at, f in samples if at >= since]
    if not inside:
        return PoolFigures()
    first, last = inside[0][1], inside[-1][1]
    if (
        last.handshakes < first.handshakes
        or last.frames < first.frames
        or last.closes < first.closes
    ):
        return last
    return PoolFigures(
        nodes=1,
        connections=last.connections,
        handshakes=last.handshakes - first.handshakes,
        handshake_failures=max(0.0, last.handshake_failures - first.handshake_failures),
        closes=last.closes - first.closes,
        abnormal_closes=max(0.0, last.abnormal_closes - first.abnormal_closes),
        frames=last.frames - first.frames,
        error_frames=max(0.0, last.error_frames - first.error_frames),
        core_errors=max(0.0, last.core_errors - first.core_errors),
    )


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class _NodeHistory:
    record: NodeRecord
    samples: deque[tuple[float, PoolFigures]]


class NodeMetricsSource:
    """The nodes' own /metrics, sampled every tick; ``token``: a viewer token when the
    nodes' /metrics needs one (``admin.metrics: viewer``); ``ssl``: the client context
    for nodes serving HTTPS under a private CA (``access.tls.ca``; None: the system's
    store)."""

    def __init__(
        self,
        registry: Registry,
        *,
        token: str = "",
        ssl: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        timeout_s: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self.token = token
        self.ssl = ssl
        self.clock = clock
        self.timeout_s = timeout_s
        self.nodes: dict[str, _NodeHistory] = {}
        self.unreadable: dict[str, str] = {}  # node id -> why, from the last sample

    async def sample(self) -> None:
        records, _ = await self.registry.list()
        at = self.clock()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(ssl=self.ssl if self.ssl is not None else True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            scraped = await asyncio.gather(
                *(self._scrape(http, r) for r in records.values()), return_exceptions=False
            )
        self.unreadable = {}
        for record, (figures, why) in zip(records.values(), scraped, strict=True):
            if figures is None:
                self.unreadable[record.id] = why
                continue
            history = self.nodes.get(record.id)
            if history is None:
                history = self.nodes[record.id] = _NodeHistory(record, deque(maxlen=SAMPLES_KEPT))
            history.record = record
            history.samples.append((at, figures))
        for gone in set(self.nodes) - set(records):  # left the registry: no longer a figure
            del self.nodes[gone]

    async def _scrape(
        self, http: aiohttp.ClientSession, node: NodeRecord
    ) -> tuple[PoolFigures | None, str]:
        try:
            async with http.get(metrics_url(node), headers=_headers(self.token)) as resp:
                if resp.status != 200:
                    return None, f"/metrics answered {resp.status}"
                return parse_node_metrics(await resp.text()), ""
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return None, f"/metrics unreadable ({exc.__class__.__name__}: {exc})"

    async def read(self, target: Target, window_s: float) -> tuple[PoolFigures, PoolFigures]:
        since = self.clock() - window_s
        canary, stable = PoolFigures(), PoolFigures()
        for history in self.nodes.values():
            figures = window_delta(history.samples, since)
            if is_canary(target, history.record):
                canary = canary + figures
            else:
                stable = stable + figures
        if self.unreadable:
            missing = ", ".join(f"{n}: {w}" for n, w in sorted(self.unreadable.items()))
            raise FiguresMissing(f"no figures from node(s) {missing}")
        return canary, stable


def _matcher(ids: Iterable[str]) -> str:
    # A regex in a PromQL string: regex-escaped, then string-escaped.
    escaped = (re.escape(i).replace("\\", "\\\\").replace('"', '\\"') for i in ids)
    return "|".join(sorted(escaped))


def _increase(metric: str, sel: str, w: str) -> str:
    """A counter's increase over the window, series by series. A node creates a labelled
    series at its first event (the first failed handshake of a kind), so a series absent at
    the window's start began inside it, at 0: its whole value is the increase. ``increase``
    alone sees only what came after its first scrape, and nothing of a burst before it (a
    canary failing would read as healthy). (If Prometheus itself is younger than the
    window, such a series counts from the node's start: both pools alike.)"""
    series = f"{metric}{{{sel}}}"
    return f"(increase({series}[{w}]) and {series} offset {w}) or {series}"


class PrometheusSource:
    """A Prometheus server's HTTP API (``/api/v1/query``): the increase of the nodes'
    counters over the window (:func:`_increase`), nodes picked by their ``node`` label.
    Down, or answering an error: FiguresMissing."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout_s: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self.url = url.rstrip("/")
        self.clock = clock
        self.timeout_s = timeout_s

    async def sample(self) -> None:
        """Prometheus keeps the history."""

    async def read(self, target: Target, window_s: float) -> tuple[PoolFigures, PoolFigures]:
        records, _ = await self.registry.list()
        canary = [r.id for r in records.values() if is_canary(target, r)]
        stable = [r.id for r in records.values() if not is_canary(target, r)]
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            return (
                await self._pool(http, canary, window_s),
                await self._pool(http, stable, window_s),
            )

    async def _pool(
        self, http: aiohttp.ClientSession, ids: list[str], window_s: float
    ) -> PoolFigures:
        if not ids:
            return PoolFigures()
        sel = f'node=~"{_matcher(ids)}"'
        w = f"{max(1, math.ceil(window_s))}s"
        by_result = await self._vector(
            http, f"sum by (result) ({_increase('imctl_access_handshakes_total', sel, w)})"
        )
        by_reason = await self._vector(
            http, f"sum by (reason) ({_increase('imctl_access_closes_total', sel, w)})"
        )
        by_code = await self._vector(
            http, f"sum by (code) ({_increase('imctl_access_frame_errors_total', sel, w)})"
        )
        frames = await self._vector(http, f"sum({_increase('imctl_access_frames_total', sel, w)})")
        conns = await self._vector(http, f"count(imctl_access_connections{{{sel}}}) or vector(0)")
        conn_sum = await self._vector(http, f"sum(imctl_access_connections{{{sel}}})")
        results = {labels.get("result", ""): v for labels, v in by_result}
        reasons = {labels.get("reason", ""): v for labels, v in by_reason}
        codes = {labels.get("code", ""): v for labels, v in by_code}
        return PoolFigures(
            nodes=int(sum(v for _, v in conns)),
            connections=int(sum(v for _, v in conn_sum)),
            handshakes=sum(results.values()),
            handshake_failures=sum(v for k, v in results.items() if k not in _NOT_FAILURES),
            closes=sum(reasons.values()),
            abnormal_closes=sum(v for k, v in reasons.items() if k in ABNORMAL_CLOSES),
            frames=sum(v for _, v in frames),
            error_frames=sum(v for k, v in codes.items() if k != CORE_ERROR_CODE),
            core_errors=codes.get(CORE_ERROR_CODE, 0.0),
        )

    async def _vector(
        self, http: aiohttp.ClientSession, query: str
    ) -> list[tuple[Mapping[str, str], float]]:
        params = {"query": query, "time": f"{self.clock():.3f}"}
        try:
            async with http.get(f"{self.url}/api/v1/query", params=params) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise FiguresMissing(
                f"prometheus at {self.url} unreachable ({exc.__class__.__name__}: {exc})"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            why = body.get("error") if isinstance(body, dict) else body
            raise FiguresMissing(f"prometheus at {self.url} answered an error: {why}")
        try:
            return [
                (item.get("metric", {}), float(item["value"][1])) for item in body["data"]["result"]
            ]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FiguresMissing(f"prometheus at {self.url}: unexpected answer ({exc})") from None
