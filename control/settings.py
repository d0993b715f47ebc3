"""The whole configuration: frozen sections, loaded from YAML with ``IMCTL_`` overrides.

Defaults < file < environment. ``IMCTL_SCHEDULER__PORT=9000`` sets ``scheduler.port`` (``__``
separates levels; values are read as YAML scalars). Every problem is reported at once, each
naming where it came from, its key path and what is expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from control.access.config import AccessSettings
from control.common.config import (
    BUILT_IN_CLIENT_KEY,
    AdminSettings,
    BackoffSettings,
    ClientAuthSettings,
    ClusterSettings,
    ConnectionSettings,
    CorsSettings,
    HeartbeatSettings,
    RegistrySettings,
    TicketSettings,
    is_loopback,
)
from control.common.errors import ConfigError
from control.common.schema import build, setting
from control.common.secrets import weakness
from control.edge.config import EdgeSettings
from control.gray.config import GraySettings
from control.presence.config import ControllerSettings, PresenceSettings
from control.scheduler.config import (
    RegionSettings,
    SchedulerSettings,
)

ENV_PREFIX = "IMCTL_"


RESERVED_ENV = frozenset({"IMCTL_CONFIG", "IMCTL_SERVER", "IMCTL_TOKEN"})


@dataclass(frozen=True)
class Settings:
    cluster: ClusterSettings = setting(ClusterSettings(), "")
    registry: RegistrySettings = setting(RegistrySettings(), "")
    scheduler: SchedulerSettings = setting(SchedulerSettings(), "")
    heartbeat: HeartbeatSettings = setting(HeartbeatSettings(), "")
    backoff: BackoffSettings = setting(BackoffSettings(), "")
    tickets: TicketSettings = setting(TicketSettings(), "")
    regions: RegionSettings = setting(RegionSettings(), "")
    gray: GraySettings = setting(GraySettings(), "")
    admin: AdminSettings = setting(AdminSettings(), "")
    client_auth: ClientAuthSettings = setting(ClientAuthSettings(), "")
    access: AccessSettings = setting(AccessSettings(), "")
    presence: PresenceSettings = setting(PresenceSettings(), "")
    controller: ControllerSettings = setting(ControllerSettings(), "")
    connections: ConnectionSettings = setting(ConnectionSettings(), "")
    edge: EdgeSettings = setting(EdgeSettings(), "")
    cors: CorsSettings = setting(CorsSettings(), "")
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "log level")
    log_format: Literal["text", "json"] = setting(
        "text", "text for people, json (one object a line) for log shippers"
    )

    def listeners(self) -> list[tuple[str, str]]:
        """Every address a process of this config listens on, with its key path."""
        out = [("scheduler.host", self.scheduler.host), ("controller.host", self.controller.host)]
        out += [(f"access.nodes[{i}].host", n.host) for i, n in enumerate(self.access.nodes)]
        return out

    def secrets(self) -> list[tuple[str, str]]:
        """Every secret in the config, with its key path (never logged)."""
        out = [(f"tickets.keys.{kid}", key) for kid, key in self.tickets.keys.items()]
        out.append(("access.internal_token", self.access.internal_token))
        out += [(f"admin.tokens[{i}].token", t.token) for i, t in enumerate(self.admin.tokens)]
        if self.client_auth.mode == "jwt":  # HS256 keys are shared secrets; PEM keys public
            out += [
                (f"client_auth.keys.{kid}", key)
                for kid, key in self.client_auth.keys.items()
                if not key.lstrip().startswith("-----BEGIN")
            ]
        return out

    def exposed(self) -> list[tuple[str, str]]:
        """The listeners others could reach (not on loopback)."""
        return [(path, host) for path, host in self.listeners() if not is_loopback(host)]

    def check(self, path: str) -> list[str]:
        problems = []
        host = self.scheduler.host
        if not self.admin.tokens and not is_loopback(host):
            problems.append(
                f"admin.tokens: required when scheduler.host ({host}) is not a loopback address"
            )
        exposed = self.exposed()
        if exposed:
            # Built-in and placeholder secrets are for a cluster on one machine only.
            where = f"{exposed[0][0]} is {exposed[0][1]}, not loopback"
            for key, secret in self.secrets():
                if secret == BUILT_IN_CLIENT_KEY:
                    continue  # told below, with what to do instead
                why = weakness(secret) if isinstance(secret, str) else None
                if why is not None:
                    problems.append(f"{key}: {why} ({where})")
        if self.admin.metrics == "viewer" and not self.admin.tokens:
            problems.append(
                "admin.metrics: viewer needs admin.tokens (with none, every caller is an operator)"
            )
        auth = self.client_auth
        if not is_loopback(host):
            if auth.mode == "trust":
                problems.append(
                    f"client_auth.mode: trust (uid= taken as given) only when scheduler.host "
                    f"is a loopback address, not {host}"
                )
            elif auth.mode == "jwt" and BUILT_IN_CLIENT_KEY in auth.keys.values():
                problems.append(
                    f"client_auth.keys: the built-in development key is public; set keys "
                    f"of your own (or a jwks_url) when scheduler.host ({host}) is not loopback"
                )
        relayed = [n.id for n in self.access.nodes or () if n.proxy_port]
        if self.edge.tls == "passthrough" and relayed and not self.access.tls.enabled:
            # HAProxy would relay TLS the nodes cannot read: every client would fail.
            problems.append(
                "edge.tls: passthrough needs access.tls (the nodes hold the certificate); "
                "give the nodes a certificate or use tls: terminate"
            )
        known = set(self.regions.known or ())
        for i, node in enumerate(self.registry.static_nodes or ()):
            if node.region and node.region not in known:
                problems.append(
                    f"registry.static_nodes[{i}].region: unknown region {node.region!r}"
                )
        for i, anode in enumerate(self.access.nodes or ()):
            if anode.region and anode.region not in known:
                problems.append(f"access.nodes[{i}].region: unknown region {anode.region!r}")
        for i, rel in enumerate(self.gray.releases or ()):
            for j, region in enumerate(rel.include.regions):
                if region not in known:
                    problems.append(
                        f"gray.releases[{i}].include.regions[{j}]: unknown region {region!r}"
                    )
        return problems


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):  # the raw text, for the type check to name
            value = raw
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                break
        else:
            node[keys[-1]] = value
            origins[".".join(keys)] = name
    return tree, origins


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_settings(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from already-parsed data plus ``env``; raise ConfigError with all."""
    if data is None:
        data = {}
    overrides, origins = _env_overrides(env or {})
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}: the top level must be a mapping, got {type(data).__name__}"])
    merged = _merge(dict(data), overrides)
    raw: list[str] = []
    settings = build(Settings, merged, "", raw)
    for problem in raw:
        key = problem.split(":", 1)[0]
        origin = next(
            (var for path, var in origins.items() if key == path or key.startswith(path + ".")),
            None,
        )
        problems.append(f"{origin} (environment): {problem}" if origin else f"{source}: {problem}")
    if problems:
        raise ConfigError(problems)
    return settings


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key a mapping repeats: PyYAML keeps the last
    silently, and a config edited by two people would lose one edit without a word."""

    def __init__(self, stream: str, pick: int | None = None) -> None:
        super().__init__(stream)
        self.repeats: list[tuple[int, int, str, int]] = []  # line, column, key, first line
        # None: the last of a repeated key wins (as PyYAML reads it); n: its n-th (0-based,
        # or the last when it has fewer) wins, so the values it hides get checked too.
        self.pick = pick
        self.most = 1  # the most times one key is given in one mapping

    @classmethod
    def read(
        cls, text: str, pick: int | None = None
    ) -> tuple[Any, list[tuple[int, int, str, int]]]:
        """The document, and every repeated key in file order."""
        loader = cls(text, pick)
        try:
            return loader.get_single_data(), sorted(loader.repeats)
        finally:
            loader.dispose()

    @classmethod
    def hidden(cls, text: str) -> list[Any]:
        """The document once for each value a repeated key hides: the n-th of every
        repeated key wins in the n-th one."""
        loader = cls(text)
        try:
            loader.get_single_data()
            most = loader.most
        finally:
            loader.dispose()
        return [cls.read(text, pick)[0] for pick in range(most - 1)]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[str, str], int] = {}
        given: dict[tuple[str, str], list[int]] = {}
        for i, (key, _) in enumerate(node.value):
            # A merge key (<<) is meant to be overridden; anything else is a slip.
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            mark = key.start_mark
            given.setdefault((key.tag, key.value), []).append(i)
            if (key.tag, key.value) in first:
                self.repeats.append(
                    (mark.line + 1, mark.column + 1, key.value, first[(key.tag, key.value)])
                )
            else:
                first[(key.tag, key.value)] = mark.line + 1
        self.most = max(self.most, *(len(at) for at in given.values()), 1)
        if self.pick is not None and any(len(at) > 1 for at in given.values()):
            dropped = {
                i
                for at in given.values()
                if len(at) > 1
                for i in at
                if i != at[min(self.pick, len(at) - 1)]
            }
            node.value = [pair for i, pair in enumerate(node.value) if i not in dropped]
        return super().construct_mapping(node, deep)


def load_settings(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (None: defaults only) and the ``IMCTL_`` environment."""
    env = os.environ if env is None else env
    if path is None:
        return parse_settings({}, "<defaults>", env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read: {exc}"]) from None
    try:
        data, repeated = _Loader.read(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{p}: {where}not valid YAML ({what})"]) from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise ConfigError([f"{p}: not valid YAML (nested too deeply)"]) from None
    repeats = [
        f"{p}: line {line}, column {column}: key {key!r} given twice (first at line {first})"
        for line, column, key, first in repeated
    ]
    problems = list(repeats)
    settings: Settings | None = None
    # What the file means (the last of a repeated key wins), then every value a repeated
    # key hides: a bad one is reported with the repeat, not after the repeat is fixed.
    documents = [data, *(_Loader.hidden(text) if repeats else [])]
    for i, document in enumerate(documents):
        try:
            built = parse_settings(document, str(p), env)
        except ConfigError as exc:
            problems += [problem for problem in exc.problems if problem not in problems]
        else:
            settings = built if i == 0 else settings
    if problems or settings is None:
        raise ConfigError(problems)
    return settings
