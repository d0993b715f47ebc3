"""A load run's settings: a YAML scenario file with the command line's flags over it,
checked all at once into a frozen ``Scenario`` or one ``ScenarioError`` listing every
problem. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

KINDS = ("steady", "storm", "gray", "drain")
MAX_CLIENTS = 200_000
# Each client holds one descriptor (its WebSocket); asks share a small pool. A worker keeps
# under the 20,000 descriptors a process may open here, with room for the pool and Python.
MAX_PER_WORKER = 19_000
DEFAULT_PER_WORKER = 12_500
MAX_WORKERS = 32


class ScenarioError(Exception):
    """Every problem with a scenario, each a line naming the key (or flag) and what is
    wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Storm:
    """Kill a node at ``at_s``: SIGKILL to ``pid`` (a node in its own process), else a
    drain of ``node`` over 0 s through the admin API (every client told to leave at once)."""

    at_s: float
    pid: int | None = None
    node: str | None = None


@dataclass(frozen=True)
class Drain:
    """Drain ``node`` over ``over_s`` at ``at_s``; undrain it when the run settles."""

    at_s: float
    node: str
    over_s: float = 10.0
    undrain: bool = True


@dataclass(frozen=True)
class Gray:
    """Create ``release`` at ``at_s`` (percent 0), raise it through ``percents`` one step
    every ``every_s``, roll it back over ``rollback_over_s`` at ``rollback_at_s``, and
    delete it when the run settles."""

    release: Mapping[str, Any]
    at_s: float
    percents: tuple[float, ...]
    every_s: float
    rollback_at_s: float
    rollback_over_s: float = 5.0


DEFAULT_RELEASE: Mapping[str, Any] = {
    "name": "load-gray",
    "target": {"pool": "canary"},
    "percent": 0,
    "state": "running",
}


@dataclass(frozen=True)
class Scenario:
    kind: str = "steady"
    server: str = "http://127.0.0.1:8080"
    clients: int = 100
    workers: int = 0  # 0: one per DEFAULT_PER_WORKER clients
    duration_s: float = 30.0  # from the first connection to the end of the settle phase
    ramp_s: float = 5.0  # connections spread over this long at the start
    settle_s: float = 5.0  # at the end: no churn and no operator action, every client back
    message_interval_s: float = 10.0  # each client sends a msg to another this often; 0: none
    logouts_per_s: float = 0.0  # churn over the whole population
    off_s: float = 2.0  # a client that logged out comes back after this long
    uid_prefix: str = "load-"
    platforms: tuple[str, ...] = ("ios", "android")
    version: str = "1.0.0"
    region: str | None = None
    tokens: str = "mint"  # mint: a JWT per client from `config`'s development key; none
    config: str | None = None  # the cluster config holding that key (default: imctl up's)
    admin_token: str | None = None
    report: str = "load-report"
    seed: int = 1
    progress: bool = True
    storm: Storm | None = None
    drain: Drain | None = None
    gray: Gray | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def worker_count(self) -> int:
        return self.workers or max(1, math.ceil(self.clients / DEFAULT_PER_WORKER))

    @property
    def active_s(self) -> float:
        """When churn and operator actions stop: the settle phase starts."""
        return self.duration_s - self.settle_s

    def uid(self, index: int) -> str:
        return f"{self.uid_prefix}{index}"


_FIELDS = {
    "scenario",
    "server",
    "clients",
    "workers",
    "duration_s",
    "ramp_s",
    "settle_s",
    "message_interval_s",
    "churn",
    "uid_prefix",
    "platforms",
    "version",
    "region",
    "tokens",
    "config",
    "admin_token",
    "report",
    "seed",
    "progress",
    "storm",
    "drain",
    "gray",
}


def read_file(path: str) -> dict[str, Any]:
    """A scenario file's mapping; ScenarioError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([f"{path}: not YAML: {exc}".replace("\n", " ")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}: a scenario is a mapping of keys, got {type(data).__name__}"])
    return data


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def bad(self, key: str, what: str) -> None:
        self.problems.append(f"{self.where}{key}: {what}")

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        default: float,
        lo: float,
        hi: float,
        prefix: str = "",
    ) -> float:
        """``data[key]`` (a section's key when ``prefix`` names the section: ``churn.``)."""
        value = data.get(key, default)
        key = prefix + key
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            self.bad(key, f"expected a number, got {value!r}")
            return default
        if not lo <= value <= hi:
            self.bad(key, f"must be from {lo:g} to {hi:g}, got {value!r}")
            return default
        return float(value)

    def integer(self, data: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, f"expected a whole number, got {value!r}")
            return default
        if not lo <= value <= hi:
            self.bad(key, f"must be from {lo} to {hi}, got {value!r}")
            return default
        return value

    def text(
        self, data: Mapping[str, Any], key: str, default: str | None, prefix: str = ""
    ) -> str | None:
        value = data.get(key, default)
        key = prefix + key
        if value is not None and (not isinstance(value, str) or not value):
            self.bad(key, f"expected a non-empty string, got {value!r}")
            return default
        return value

    def section(self, data: Mapping[str, Any], key: str, known: set[str]) -> Mapping[str, Any]:
        value = data.get(key)
        if not isinstance(value, dict):
            self.bad(key, f"expected a mapping, got {value!r}")
            return {}
        for k in sorted(set(value) - known, key=str):
            self.bad(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
        return value


def parse(data: Mapping[str, Any], where: str = "") -> Scenario:
    """The scenario ``data`` describes (a file's mapping with the flags merged over it);
    ScenarioError listing every problem. ``where`` prefixes each (a file name and ': ')."""
    c = _Checker(where)
    for key in sorted(set(data) - _FIELDS, key=str):
        c.bad(str(key), f"unknown key (known: {', '.join(sorted(_FIELDS))})")
    d = Scenario()
    kind = data.get("scenario", d.kind)
    if kind not in KINDS:
        c.bad("scenario", f"one of {', '.join(KINDS)}, got {kind!r}")
        kind = d.kind
    server = data.get("server", d.server)
    try:
        parts = urlsplit(server) if isinstance(server, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        if ok and parts is not None:
            parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        c.bad("server", f"a scheduler URL like http://127.0.0.1:8080, got {server!r}")
        server = d.server
    clients = c.integer(data, "clients", d.clients, 1, MAX_CLIENTS)
    workers = c.integer(data, "workers", d.workers, 0, MAX_WORKERS)
    duration = c.number(data, "duration_s", d.duration_s, 1, 7 * 86400)
    ramp = c.number(data, "ramp_s", d.ramp_s, 0, 86400)
    settle = c.number(data, "settle_s", d.settle_s, 0, 86400)
    if ramp + settle >= duration and not c.problems:
        c.bad("duration_s", f"must be longer than ramp_s + settle_s ({ramp + settle:g})")
    interval = c.number(data, "message_interval_s", d.message_interval_s, 0, 86400)
    if 0 < interval < 0.1:
        c.bad("message_interval_s", "0 (no messages) or at least 0.1")
    logouts, off = d.logouts_per_s, d.off_s
    if "churn" in data:
        churn = c.section(data, "churn", {"logouts_per_s", "off_s"})
        logouts = c.number(churn, "logouts_per_s", logouts, 0, 100_000, "churn.")
        off = c.number(churn, "off_s", off, 0, 3600, "churn.")
    platforms = data.get("platforms", list(d.platforms))
    if isinstance(platforms, str):
        platforms = [p for p in platforms.split(",") if p]
    if (
        not isinstance(platforms, list)
        or not platforms
        or not all(isinstance(p, str) and p.isidentifier() for p in platforms)
    ):
        c.bad("platforms", f"a list of platform names like [ios, android], got {platforms!r}")
        platforms = list(d.platforms)
    tokens = data.get("tokens", d.tokens)
    if tokens not in ("mint", "none"):
        c.bad("tokens", f"mint (a JWT per client from the config's key) or none, got {tokens!r}")
        tokens = d.tokens
    progress = data.get("progress", d.progress)
    if not isinstance(progress, bool):
        c.bad("progress", f"true or false, got {progress!r}")
        progress = d.progress
    out = Scenario(
        kind=kind,
        server=str(server).rstrip("/"),
        clients=clients,
        workers=workers,
        duration_s=duration,
        ramp_s=ramp,
        settle_s=settle,
        message_interval_s=interval,
        logouts_per_s=logouts,
        off_s=off,
        uid_prefix=c.text(data, "uid_prefix", d.uid_prefix) or d.uid_prefix,
        platforms=tuple(platforms),
        version=c.text(data, "version", d.version) or d.version,
        region=c.text(data, "region", d.region),
        tokens=tokens,
        config=c.text(data, "config", d.config),
        admin_token=c.text(data, "admin_token", d.admin_token),
        report=c.text(data, "report", d.report) or d.report,
        seed=c.integer(data, "seed", d.seed, 0, 2**31),
        progress=progress,
    )
    if workers and math.ceil(clients / workers) > MAX_PER_WORKER:
        c.bad(
            "workers",
            f"{workers} worker(s) would hold {math.ceil(clients / workers)} clients each; "
            f"at most {MAX_PER_WORKER} (descriptors per process): give at least "
            f"{math.ceil(clients / MAX_PER_WORKER)}",
        )
    active = duration - settle
    out = _actions(c, data, out, active)
    if c.problems:
        raise ScenarioError(c.problems)
    return out


def _at(c: _Checker, section: Mapping[str, Any], key: str, name: str, active: float) -> float:
    at = c.number(section, key, 0.0, 0, 86400, f"{name}.")
    if key in section and at >= active:
        c.bad(f"{name}.{key}", f"must come before the settle phase (at {active:g}s)")
    return at


def _actions(c: _Checker, data: Mapping[str, Any], out: Scenario, active: float) -> Scenario:
    """The operator action the scenario's kind asks for, from its section."""
    kind = out.kind
    for other in ("storm", "drain", "gray"):
        if other in data and other != kind:
            c.bad(other, f"a section for scenario {other}, but the scenario is {kind}")
    if kind == "storm":
        s = c.section(data, "storm", {"at_s", "pid", "node"}) if "storm" in data else {}
        if "storm" not in data:
            c.bad("storm", "scenario storm needs storm: {at_s, pid or node}")
        at = _at(c, s, "at_s", "storm", active)
        pid = s.get("pid")
        node = c.text(s, "node", None, "storm.")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1):
            c.bad("storm.pid", f"a process id, got {pid!r}")
            pid = None
        if s and (pid is None) == (node is None):
            c.bad("storm", "give exactly one of pid (kill -9 it) or node (drain it over 0s)")
        return replace(out, storm=Storm(at, pid, node))
    if kind == "drain":
        s = (
            c.section(data, "drain", {"at_s", "node", "over_s", "undrain"})
            if "drain" in data
            else {}
        )
        if "drain" not in data:
            c.bad("drain", "scenario drain needs drain: {at_s, node, over_s}")
        at = _at(c, s, "at_s", "drain", active)
        node = c.text(s, "node", None, "drain.")
        if s and node is None:
            c.bad("drain.node", "which node to drain")
        undrain = s.get("undrain", True)
        if not isinstance(undrain, bool):
            c.bad("drain.undrain", f"true or false, got {undrain!r}")
            undrain = True
        over = c.number(s, "over_s", 10.0, 0, 3600, "drain.")
        return replace(out, drain=Drain(at, node or "", over, undrain))
    if kind == "gray":
        known = {"release", "at_s", "percents", "every_s", "rollback_at_s", "rollback_over_s"}
        s = c.section(data, "gray", known) if "gray" in data else {}
        release = s.get("release", DEFAULT_RELEASE)
        if not isinstance(release, dict) or not isinstance(release.get("name"), str):
            c.bad("gray.release", "a release mapping with a name (as imctl gray create takes)")
            release = DEFAULT_RELEASE
        at = _at(c, s, "at_s", "gray", active)
        percents = s.get("percents", [10, 50])
        if not isinstance(percents, list) or not all(
            isinstance(p, int | float) and not isinstance(p, bool) and 0 < p <= 100
            for p in percents
        ):
            c.bad("gray.percents", f"a list of percents (0-100], got {percents!r}")
            percents = [10, 50]
        every = c.number(s, "every_s", 5.0, 0.1, 86400, "gray.")
        default_rollback = at + every * (len(percents) + 1)
        rollback = c.number(s, "rollback_at_s", default_rollback, 0, 86400, "gray.")
        if rollback >= active:
            c.bad("gray.rollback_at_s", f"must come before the settle phase (at {active:g}s)")
        if rollback < at + every * len(percents):
            c.bad("gray.rollback_at_s", "must come after the last percent step")
        over = c.number(s, "rollback_over_s", 5.0, 0, 3600, "gray.")
        g = Gray(dict(release), at, tuple(float(p) for p in percents), every, rollback, over)
        return replace(out, gray=g)
    return out
