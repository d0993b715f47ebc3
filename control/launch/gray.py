"""The gray step controller in the controller process: a supervised task on the
controller's supervisor, stepping only while this controller leads (wired here because
control/presence must not import control/gray)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from control.common.kv import KeyValueStore
from control.common.registry import Registry
from control.common.tasks import Supervisor
from control.common.tls import client_context
from control.gray.figures import FiguresSource, NodeMetricsSource, PrometheusSource
from control.gray.metrics import GrayMetrics
from control.gray.stepper import Stepper
from control.gray.store import ReleaseStore
from control.settings import Settings


def figures_source(settings: Settings, kv: KeyValueStore) -> FiguresSource:
    """Prometheus when ``gray.prometheus_url`` is set, else the nodes' own /metrics (with
    a token when those need a viewer: the first viewer's, else any; trusting
    ``access.tls.ca`` when set)."""
    registry = Registry(kv, settings.cluster.prefix)
    if settings.gray.prometheus_url:
        return PrometheusSource(registry, settings.gray.prometheus_url)
    token = ""
    if settings.admin.metrics == "viewer" and settings.admin.tokens:
        tokens = sorted(settings.admin.tokens, key=lambda t: t.role != "viewer")
        token = tokens[0].token
    # The nodes' https:// internal URLs are signed by the CA the nodes trust each other by.
    ca = settings.access.tls.ca
    return NodeMetricsSource(registry, token=token, ssl=client_context(ca) if ca else None)


def attach_stepper(
    app: web.Application,
    settings: Settings,
    kv: KeyValueStore,
    supervisor: Supervisor,
    leader: Callable[[], bool],
    registry: CollectorRegistry | None = None,
) -> Stepper:
    """Start the stepper on ``supervisor`` once ``app`` (the controller's) has started."""
    stepper = Stepper(
        ReleaseStore(kv, settings.cluster.prefix),
        figures_source(settings, kv),
        leader=leader,
        metrics=GrayMetrics(registry) if registry is not None else None,
    )

    async def run(app: web.Application) -> AsyncIterator[None]:
        supervisor.spawn(
            "gray-stepper", functools.partial(stepper.run, tick_s=settings.gray.step_tick_s)
        )
        yield  # the supervisor's close stops it with the controller's own tasks

    app.cleanup_ctx.append(run)
    return stepper
