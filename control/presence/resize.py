"""An operator's ring changes as pure transitions over a :class:`RingSpec`: each returns the
next spec (version + 1, ``migrating``, ``previous`` = the shards before) or refuses with
every problem at once. The admin API stores the result with a compare-and-swap; the leader's
mover moves the users and calls :func:`finish`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache

from control.presence.ring import MAX_WEIGHT, SHARD_ID_PATTERN, Ring, RingSpec, ShardSpec

# The status of a refusal with problems of several kinds: the first kind present, so that a
# request that can never succeed is not answered "try later" (409).
NOT_FOUND, BAD, CONFLICT = 404, 400, 409
_PRECEDENCE = (NOT_FOUND, BAD, CONFLICT)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
EMBEDDED = "embedded:"
HASH_SPACE = 1 << 128  # the ring's points are md5 digests


class RingChangeRefused(Exception):
    """A ring change that may not be made: every problem, and the HTTP status to answer."""

    def __init__(self, problems: list[str], status: int) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.status = status


class _Problems:
    """Problems by status, collected before deciding (one refusal lists them all)."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def add(self, status: int, message: str) -> None:
        self.found.append((status, message))

    def raise_any(self) -> None:
        if self.found:
            status = next(s for s in _PRECEDENCE if any(f[0] == s for f in self.found))
            raise RingChangeRefused([m for _, m in self.found], status)


def is_embedded(url: str) -> bool:
    """An in-process shard (``embedded:<id>``, or no url as a config may seed it)."""
    return url == "" or url.startswith(EMBEDDED)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a shard; None when it can."""
    if url.startswith(EMBEDDED):
        if not re.fullmatch(SHARD_ID_PATTERN, url[len(EMBEDDED) :]):
            return f"url: {url!r}: embedded:<id> with an id of letters, digits and _.-"
        return None
    if url.startswith("redis+sentinel://"):
        from control.presence.sentinel import parse_sentinel_url

        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            return f"url: {exc}"
        return None
    if url.startswith(REDIS_SCHEMES) and len(url) > url.index("//") + 2 and url.isprintable():
        return None
    return (
        f"url: {url!r} is not redis://host:port/db (or rediss://, unix://,"
        " redis+sentinel://host:port[,host:port]/master-name, embedded:<id>)"
    )


def _stable_now(spec: RingSpec, problems: _Problems) -> None:
    if spec.migrating:
        problems.add(
            CONFLICT,
            f"ring version {spec.version} is still migrating: wait until it is stable "
            "(imctl presence ring status)",
        )


def _weight(weight: object, problems: _Problems) -> bool:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        problems.add(BAD, f"weight: a whole number from 1 to {MAX_WEIGHT}, not {weight!r}")
        return False
    return True


def _find(spec: RingSpec, shard_id: str, problems: _Problems) -> ShardSpec | None:
    for shard in spec.shards:
        if shard.id == shard_id:
            return shard
    known = ", ".join(s.id for s in spec.shards)
    problems.add(NOT_FOUND, f"no shard {shard_id!r} on the ring (shards: {known})")
    return None


def _next(spec: RingSpec, shards: tuple[ShardSpec, ...]) -> RingSpec:
    return replace(
        spec, version=spec.version + 1, shards=shards, previous=spec.shards, state="migrating"
    )


def _free_id(spec: RingSpec, url: str) -> str:
    """The id an added shard gets when none is given: the embedded url's, else s<N>."""
    taken = {s.id for s in spec.shards}
    named = url[len(EMBEDDED) :] if url.startswith(EMBEDDED) else ""
    if re.fullmatch(SHARD_ID_PATTERN, named) and named not in taken:
        return named
    n = len(spec.shards)
    while f"s{n}" in taken:
        n += 1
    return f"s{n}"


def add_shard(spec: RingSpec, url: str, weight: int = 1, shard_id: str | None = None) -> RingSpec:
    """A new shard at ``url``: the users whose owner becomes it move there."""
    problems = _Problems()
    _stable_now(spec, problems)
    _weight(weight, problems)
    bad_url = url_problem(url)
    if bad_url is not None:
        problems.add(BAD, bad_url)
    elif any(s.url == url for s in spec.shards):
        owner = next(s.id for s in spec.shards if s.url == url)
        problems.add(BAD, f"url: {url} is shard {owner!r} already")
    elif is_embedded(url) != all(is_embedded(s.url) for s in spec.shards):
        # An embedded shard lives inside one process: other processes could not reach it.
        kind = "embedded" if is_embedded(url) else "redis"
        problems.add(BAD, f"url: a {kind} shard on a ring of the other kind")
    new_id = _free_id(spec, url) if shard_id is None else shard_id
    if not re.fullmatch(SHARD_ID_PATTERN, new_id):
        problems.add(BAD, f"id: {new_id!r}: 1-63 letters, digits and _.- (a letter or digit first)")
    elif any(s.id == new_id for s in spec.shards):
        problems.add(BAD, f"id: shard {new_id!r} exists already")
    problems.raise_any()
    return _next(spec, (*spec.shards, ShardSpec(new_id, url, weight)))


def remove_shard(spec: RingSpec, shard_id: str) -> RingSpec:
    """Take ``shard_id`` off the ring: all its users move out before it leaves."""
    problems = _Problems()
    _stable_now(spec, problems)
    found = _find(spec, shard_id, problems)
    if found is not None and len(spec.shards) == 1:
        problems.add(BAD, f"shard {shard_id!r} is the last one: a ring keeps at least one")
    problems.raise_any()
    return _next(spec, tuple(s for s in spec.shards if s.id != shard_id))


def reweight_shard(spec: RingSpec, shard_id: str, weight: int) -> RingSpec:
    """Give ``shard_id`` another share of the users."""
    problems = _Problems()
    _stable_now(spec, problems)
    valid = _weight(weight, problems)
    found = _find(spec, shard_id, problems)
    if valid and found is not None and found.weight == weight:
        problems.add(BAD, f"shard {shard_id!r} has weight {weight} already: nothing to change")
    problems.raise_any()
    return _next(
        spec, tuple(replace(s, weight=weight) if s.id == shard_id else s for s in spec.shards)
    )


def finish(spec: RingSpec) -> RingSpec:
    """The migration is over (a full pass moved nothing): stable, same version."""
    if not spec.migrating:
        raise RingChangeRefused([f"ring version {spec.version} is stable already"], CONFLICT)
    return replace(spec, previous=(), state="stable")


@lru_cache(maxsize=8)  # ~30 ms at 160 vnodes, asked every second by ring status --watch
def moved_fraction(spec: RingSpec) -> float:
    """The share of the hash space whose owner differs between ``previous`` and ``shards``:
    the share of users a migration ideally moves (0 for a stable ring). Exact: the owner
    is constant between consecutive points of the two continua."""
    if not spec.migrating or not spec.previous:
        return 0.0
    new = Ring(spec)
    old = Ring(replace(spec, shards=spec.previous, previous=(), state="stable"))
    new_owner, old_owner = _owner_at(new), _owner_at(old)
    starts = sorted({0, *new._points, *old._points})
    moved = 0
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else HASH_SPACE
        if new_owner(start) != old_owner(start):
            moved += end - start
    return moved / HASH_SPACE


def _owner_at(ring: Ring) -> Callable[[int], str]:
    """The owner of a point on the continuum, as ``Ring`` finds it for a uid's md5."""
    points, owners = ring._points, ring._owners

    def owner(point: int) -> str:
        i = bisect_right(points, point)
        return owners[i if i < len(points) else 0]

    return owner
