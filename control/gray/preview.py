"""What a change to one release would do to users, before it is made (``--dry-run``): over a
deterministic sample of users, how many its rules take before and after, read off the one
rule walk (:meth:`Rule.verdict`). Pure.

The sample is synthetic: ``sample-0`` .. ``sample-N`` spread evenly over the profiles either
side's filters can tell apart (each region, platform and app-version interval they name,
and one outside them all), plus every uid either side lists or excludes. For a percent or
salt change (the common case) the share is exactly the bucket arithmetic over N users; for
a filter change it is the share of that even spread, not of real traffic. Only this release
is looked at: a user an earlier release takes is counted as if it were alone.
"""

from __future__ import annotations

from typing import NamedTuple

from control.gray.model import TAKING, Release, UserContext, Version, hash64

SAMPLE_SIZE = 10_000
OUTSIDE_PLATFORM = ""  # a platform no filter names (platform filters are never empty strings)


class Moves(NamedTuple):
    """Users of the sample whose track the change moves: into the release, out of it."""

    sample: int
    into: int
    out_of: int
    share: float  # (into + out_of) / sample, rounded to 0.0001

    def as_data(self) -> dict[str, float | int]:
        return self._asdict()


def _versions(releases: list[Release]) -> list[Version]:
    """One version inside each interval the releases' ranges cut: 0, each bound, and just
    above each bound."""
    found = {Version((0, 0, 0, 0))}
    for release in releases:
        for spec in release.include.app_versions:
            for _, bound in spec.clauses:
                a, b, c, d = bound.parts
                found |= {bound, Version((a, b, c, d + 1))}
    return sorted(found)


def sample(releases: list[Release], size: int = SAMPLE_SIZE) -> list[UserContext]:
    """The deterministic sample for ``releases`` (the two sides of a change)."""
    regions: list[str | None] = [None]
    regions += sorted({r for x in releases for r in x.include.regions})
    platforms = [OUTSIDE_PLATFORM] + sorted({p for x in releases for p in x.include.platforms})
    versions = _versions(releases)
    profiles = [(p, v, r) for r in regions for p in platforms for v in versions]
    users = [UserContext(f"sample-{i}", *profiles[i % len(profiles)]) for i in range(size)]
    named = sorted({u for x in releases for u in (*x.include.uids, *x.exclude.uids)})
    users += [UserContext(uid, *profiles[hash64(uid) % len(profiles)]) for uid in named]
    return users


def _takes(release: Release | None, user: UserContext, uid_hash: int) -> bool:
    if release is None:
        return False
    rule = release.rule
    return rule.verdict(user, rule.bucket(uid_hash)) in TAKING


def moves(before: Release | None, after: Release | None, size: int = SAMPLE_SIZE) -> Moves:
    """How many users of the sample the change from ``before`` to ``after`` moves (None: the
    release does not exist on that side, so it takes nobody)."""
    users = sample([r for r in (before, after) if r is not None], size)
    into = out_of = 0
    for user in users:
        uid_hash = hash64(user.uid)
        was, now = _takes(before, user, uid_hash), _takes(after, user, uid_hash)
        into += now and not was
        out_of += was and not now
    total = len(users)
    return Moves(total, into, out_of, round((into + out_of) / total, 4) if total else 0.0)
