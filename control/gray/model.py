"""Releases and who they match. Pure: no IO, no clock.

A user matches a release when not excluded, and either listed in ``include.uids`` or inside
every non-empty filter (regions, platforms, app-version ranges) and inside the percent bucket.
Bucketing is sticky and monotonic: ``hash(salt:uid) mod 10000 < percent*100``, so raising the
percent only ever adds users.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from control.common.schema import build, setting

BUCKETS = 10_000
ReleaseState = Literal["draft", "running", "paused", "promoted", "rolled_back"]
# Releases whose rules route users; the canary nodes of these (and of rolled-back ones,
# which are draining) never take stable-track users.
ROUTING_STATES = frozenset({"running", "paused"})
FENCING_STATES = frozenset({"running", "paused", "rolled_back"})

# ASCII digits only: \d also takes other scripts' digits (U+0661), which int() reads.
_VERSION_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}")
_RANGE_RE = re.compile(r"\s*(>=|<=|==|!=|>|<|=)?\s*([0-9.]+)\s*")
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """An app version such as ``5.12.1``; up to four numeric parts, missing parts are 0."""

    parts: tuple[int, int, int, int]

    @classmethod
    def parse(cls, text: str) -> Version:
        if not isinstance(text, str) or not _VERSION_RE.fullmatch(text):
            raise ValueError(f"{text!r} is not a version like 1.2.3")
        nums = [int(p) for p in text.split(".")]
        nums += [0] * (4 - len(nums))
        return cls((nums[0], nums[1], nums[2], nums[3]))

    def __str__(self) -> str:
        parts = list(self.parts)
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        return ".".join(map(str, parts))


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "=": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class VersionRange:
    """``>=5.2,<6`` style: every clause must hold. A bare version means equality."""

    spec: str
    clauses: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, spec: str) -> VersionRange:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("a version range must be a non-empty string like '>=5.2,<6'")
        clauses = []
        for part in spec.split(","):
            m = _RANGE_RE.fullmatch(part)
            if not m:
                raise ValueError(f"bad clause {part.strip()!r} in version range {spec!r}")
            clauses.append((m.group(1) or "==", Version.parse(m.group(2))))
        return cls(spec.strip(), tuple(clauses))

    @classmethod
    def from_config(cls, data: Any, path: str, problems: list[str]) -> VersionRange | None:
        try:
            return cls.parse(data)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
            return None

    def to_config(self) -> str:
        """The inverse of :meth:`from_config` (what a stored release holds)."""
        return self.spec

    @cached_property
    def _compiled(self) -> tuple[tuple[Callable[[Any, Any], bool], tuple[int, ...]], ...]:
        return tuple((_OPS[op], bound.parts) for op, bound in self.clauses)

    def contains(self, version: Version) -> bool:
        parts = version.parts
        return all(op(parts, bound) for op, bound in self._compiled)


_MASK = (1 << 64) - 1


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix(uid_hash: int, salt_hash: int) -> int:
    """``hash(salt:uid)``: the splitmix64 finaliser over both 64-bit hashes.

    The uid is hashed once per request and each release only mixes in its salt, so ten
    releases cost one cryptographic hash, not ten; different salts still give independent
    buckets (a bijective avalanche mix of different inputs), unlike a CRC.
    """
    z = (uid_hash ^ salt_hash) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def bucket(salt: str, uid: str) -> int:
    """The user's sticky bucket in [0, 10000)."""
    return mix(hash64(uid), hash64(salt)) % BUCKETS


def threshold(percent: float) -> int:
    """Buckets below this are in; 0.01% granularity."""
    return round(percent * 100)


@dataclass(frozen=True)
class Target:
    """Which nodes serve the release: a pool, or a version."""

    pool: str = setting("", "access-node pool that runs the new version")
    version: str = setting("", "access-node version string")

    def check(self, path: str) -> list[str]:
        if bool(self.pool) == bool(self.version):
            return [f"{path}: set exactly one of pool or version"]
        return []

    def to_config(self) -> dict[str, str]:
        """The field that is set (only one may be), as a stored release holds it."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def selects(self, pool: str, version: str) -> bool:
        return pool == self.pool if self.pool else version == self.version


@dataclass(frozen=True)
class Include:
    uids: tuple[str, ...] = setting((), "users always in the release (whitelist)")
    regions: tuple[str, ...] = setting((), "only users in these regions (empty: any)")
    platforms: tuple[str, ...] = setting((), "only these platforms (empty: any)")
    app_versions: tuple[VersionRange, ...] = setting((), "only app versions in any range")

    @cached_property
    def uid_set(self) -> frozenset[str]:
        return frozenset(self.uids)


@dataclass(frozen=True)
class Exclude:
    uids: tuple[str, ...] = setting((), "users never in the release")

    @cached_property
    def uid_set(self) -> frozenset[str]:
        return frozenset(self.uids)


class UserContext(NamedTuple):
    """What a release rule may look at."""

    uid: str
    platform: str
    app_version: Version
    region: str | None


@dataclass(frozen=True)
class Release:
    """One gray release (the **contract** record at ``<prefix>/gray/<name>``)."""

    name: str = setting(doc="release name", pattern=NAME_PATTERN)
    target: Target = setting(doc="nodes that serve it")
    percent: float = setting(0.0, "share of matching users, 0..100, 0.01 steps", ge=0, le=100)
    include: Include = setting(Include(), "who may be in")
    exclude: Exclude = setting(Exclude(), "who is never in")
    salt: str = setting("", "bucketing salt; empty means the release name", max_len=128)
    steps: tuple[float, ...] = setting((), "percent steps for the step controller")
    step_interval_s: float = setting(600.0, "seconds between steps", gt=0)
    analysis: Mapping[str, Any] = setting(MappingProxyType({}), "canary analysis settings")
    state: ReleaseState = setting("running", "draft|running|paused|promoted|rolled_back")
    rollback_over_s: float = setting(
        0.0,
        "set by rollback --over: seconds its connections take to leave the canary nodes "
        "(0: each node's own drain window); the nodes' drain_max_rate is the ceiling",
        ge=0,
        le=86400,
    )

    def check(self, path: str) -> list[str]:
        problems = []
        if abs(self.percent * 100 - round(self.percent * 100)) > 1e-6:
            problems.append(f"{path}.percent: granularity is 0.01, got {self.percent}")
        for i, step in enumerate(self.steps):
            if not 0 <= step <= 100:
                problems.append(f"{path}.steps[{i}]: must be within 0..100, got {step}")
        if list(self.steps) != sorted(self.steps):
            problems.append(f"{path}.steps: must be increasing")
        return problems

    @classmethod
    def from_config(cls, data: Any, path: str, problems: list[str]) -> Release:
        return build(cls, data, path, problems)

    @cached_property
    def effective_salt(self) -> str:
        return self.salt or self.name

    @cached_property
    def salt_hash(self) -> int:
        return hash64(self.effective_salt)

    def bucket_of(self, user: UserContext) -> int:
        return mix(hash64(user.uid), self.salt_hash) % BUCKETS

    @cached_property
    def cutoff(self) -> int:
        return threshold(self.percent)

    @property
    def routes(self) -> bool:
        return self.state in ROUTING_STATES

    @property
    def fences(self) -> bool:
        return self.state in FENCING_STATES

    @cached_property
    def rule(self) -> Rule:
        inc = self.include
        return Rule(
            release=self,
            routes=self.routes,
            cutoff=self.cutoff,
            salt_hash=self.salt_hash,
            exclude=self.exclude.uid_set,
            include=inc.uid_set,
            regions=frozenset(inc.regions) if inc.regions else None,
            platforms=frozenset(inc.platforms) if inc.platforms else None,
            versions=inc.app_versions or None,
        )

    def matches(self, user: UserContext) -> bool:
        return self.rule.matches(user, hash64(user.uid))


Outcome = Literal[
    "not_routing",  # the release's state routes nobody (draft, promoted, rolled back)
    "excluded",  # the uid is on the exclude list
    "listed",  # the uid is on the include list: in, whatever the filters and percent
    "other_region",
    "other_platform",
    "other_version",
    "in_percent",
    "outside_percent",
]
# The outcomes that put a user in the release.
TAKING: frozenset[Outcome] = frozenset({"listed", "in_percent"})


@dataclass(frozen=True, slots=True)
class Rule:
    """A release's rules flattened for the hot path. :meth:`verdict` is the one walk over
    them; matching, :class:`RuleSet` and :func:`explain` are all read off it."""

    release: Release
    routes: bool
    cutoff: int
    salt_hash: int
    exclude: frozenset[str]
    include: frozenset[str]
    regions: frozenset[str] | None
    platforms: frozenset[str] | None
    versions: tuple[VersionRange, ...] | None

    def verdict(self, user: UserContext, bucket: int, admitted: bool = False) -> Outcome:
        """What this release makes of ``user``, whose sticky bucket for it is ``bucket``.

        The order is the contract: state, exclusion, the whitelist, the filters (region,
        platform, app version), then the percent. ``admitted``: the caller already knows
        the filters pass (:class:`RuleSet` works that out once per profile).
        """
        if not self.routes:
            return "not_routing"
        uid = user.uid
        if uid in self.exclude:
            return "excluded"
        if uid in self.include:
            return "listed"
        if not admitted:
            kept_out = self.filtered(user)
            if kept_out is not None:
                return kept_out
        return "in_percent" if bucket < self.cutoff else "outside_percent"

    def filtered(self, user: UserContext) -> Outcome | None:
        """The filter step of :meth:`verdict`: which filter keeps the user's profile
        (region, platform, app version) out; None when every one lets it in."""
        if self.regions is not None and user.region not in self.regions:
            return "other_region"
        if self.platforms is not None and user.platform not in self.platforms:
            return "other_platform"
        if self.versions is not None and not any(
            r.contains(user.app_version) for r in self.versions
        ):
            return "other_version"
        return None

    def bucket(self, uid_hash: int) -> int:
        """The user's sticky bucket for this release, from ``hash64(uid)``."""
        return mix(uid_hash, self.salt_hash) % BUCKETS

    def matches(self, user: UserContext, uid_hash: int) -> bool:
        """The release takes ``user`` (a non-routing release takes nobody)."""
        return self.verdict(user, self.bucket(uid_hash)) in TAKING


def first_match(releases: tuple[Release, ...], user: UserContext) -> Release | None:
    """The first routing release whose rules take this user; None means the stable track."""
    uid_hash = hash64(user.uid)
    for release in releases:
        if release.rule.matches(user, uid_hash):
            return release
    return None


class Verdict(NamedTuple):
    """What one release made of one user, for operators asking "why this track?"."""

    release: str
    state: str
    outcome: Outcome
    bucket: int  # the user's sticky bucket for this release, 0..9999
    cutoff: int  # buckets below this are in (percent x 100)
    chosen: bool  # this release fixed the user's track


def explain(releases: tuple[Release, ...], user: UserContext) -> list[Verdict]:
    """Every release's verdict on ``user`` in evaluation order; the first that takes the
    user is ``chosen``, exactly as :func:`first_match` decides."""
    uid_hash = hash64(user.uid)
    verdicts: list[Verdict] = []
    chosen = False
    for release in releases:
        rule = release.rule
        bucket = rule.bucket(uid_hash)
        outcome = rule.verdict(user, bucket)
        takes = outcome in TAKING and not chosen
        chosen = chosen or takes
        verdicts.append(Verdict(release.name, release.state, outcome, bucket, rule.cutoff, takes))
    return verdicts


class RuleSet:
    """The routing releases of a snapshot, compiled: which releases a profile (platform,
    app version, region) can match is worked out once per distinct profile and remembered,
    so a request checks only its uid against the few releases left. Decides exactly as
    :func:`first_match` does (the property tests hold the two to that)."""

    PROFILES_MAX = 4096

    def __init__(self, releases: tuple[Release, ...]) -> None:
        self.rules = tuple(r.rule for r in releases if r.routes)
        self.releases = tuple(r.release for r in self.rules)
        # Whitelisted users skip the filters; they take the plain path.
        self.listed = frozenset().union(*(r.include for r in self.rules))
        self._by_profile: dict[tuple[str, Version, str | None], tuple[Rule, ...]] = {}

    def first(self, user: UserContext) -> Release | None:
        if not self.rules:
            return None
        uid = user.uid
        if uid in self.listed:
            return first_match(self.releases, user)
        profile = (user.platform, user.app_version, user.region)
        candidates = self._by_profile.get(profile)
        if candidates is None:
            if len(self._by_profile) >= self.PROFILES_MAX:
                self._by_profile.clear()
            candidates = tuple(r for r in self.rules if r.cutoff and r.filtered(user) is None)
            self._by_profile[profile] = candidates
        if not candidates:
            return None
        uid_hash = hash64(uid)
        for rule in candidates:
            # Listed nowhere and the profile admitted: what is left of the verdict is the
            # exclusion and the percent. (The bucket inline: this runs per request.)
            bucket = mix(uid_hash, rule.salt_hash) % BUCKETS
            if rule.verdict(user, bucket, admitted=True) == "in_percent":
                return rule.release
        return None
