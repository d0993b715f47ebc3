"""The message-core plug-in (**contract**): the access node loads ``module:Class`` and calls
``on_open``, ``on_message`` and ``on_close``; a session can ``send``; the core pushes to
other users through :class:`CoreContext.push`."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from control.common.errors import ConfigError


class SessionView(Protocol):
    """What a core sees of a client connection."""

    uid: str
    device: str
    conn: str
    platform: str

    async def send(self, frame: Mapping[str, Any]) -> bool: ...


@dataclass(frozen=True)
class PushResult:
    """What a push achieved: frames delivered, users with no live connection, nodes that
    could not be reached (their users are in ``failed``), users whose presence shard could
    not be read (``unknown``: perhaps online, not told)."""

    delivered: int = 0
    offline: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    failed_nodes: tuple[str, ...] = field(default=())
    unknown: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "offline": list(self.offline),
            "failed": list(self.failed),
            "failed_nodes": list(self.failed_nodes),
            "unknown": list(self.unknown),
        }


PushFn = Callable[[Sequence[str], Mapping[str, Any]], Awaitable[PushResult]]


@dataclass(frozen=True)
class CoreContext:
    node_id: str
    push: PushFn
    options: Mapping[str, Any]
    log: logging.Logger


class MessageCore(Protocol):
    #: frame types (``t``) the core handles; anything else gets an ``unknown_type`` error
    types: Collection[str]

    async def on_open(self, session: SessionView) -> None: ...

    async def on_message(self, session: SessionView, frame: Mapping[str, Any]) -> None: ...

    async def on_close(self, session: SessionView, reason: str) -> None: ...


def load_core(spec: str, context: CoreContext) -> MessageCore:
    """Import ``module:Class`` and build it with the context; config errors name the spec."""
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError([f"access.core: cannot import {module_name!r}: {exc}"]) from None
    cls: Any = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError([f"access.core: {module_name!r} has no {class_name!r}"])
    core = cls(context)
    for hook in ("on_open", "on_message", "on_close"):
        if not callable(getattr(core, hook, None)):
            raise ConfigError([f"access.core: {spec} lacks {hook}()"])
    if not hasattr(core, "types"):
        raise ConfigError([f"access.core: {spec} lacks a 'types' collection"])
    return core
