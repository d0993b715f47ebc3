from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.common.schema import build
from control.gray.model import (
    Exclude,
    Include,
    Release,
    RuleSet,
    Target,
    UserContext,
    Version,
    VersionRange,
    bucket,
    explain,
    first_match,
    hash64,
    threshold,
)

uids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=24)
percents = st.integers(min_value=0, max_value=10_000).map(lambda b: b / 100)


def release(name: str = "r1", percent: float = 0.0, **kw: object) -> Release:
    return Release(name=name, target=Target(pool="canary"), percent=percent, **kw)  # type: ignore[arg-type]


def user(
    uid: str, platform: str = "ios", version: str = "5.0", region: str | None = "r1"
) -> UserContext:
    return UserContext(uid, platform, Version.parse(version), region)


@given(uid=uids, p=percents, q=percents)
def test_bucketing_is_monotonic(uid: str, p: float, q: float) -> None:
    low, high = sorted((p, q))
    if release(percent=low).matches(user(uid)):
        assert release(percent=high).matches(user(uid))


@given(uid=uids, salt=st.text(max_size=10))
def test_bucketing_is_sticky(uid: str, salt: str) -> None:
    assert bucket(salt, uid) == bucket(salt, uid)
    assert 0 <= bucket(salt, uid) < 10_000


@given(uid=uids, p=percents)
def test_excluded_uids_never_match(uid: str, p: float) -> None:
    r = release(percent=p, include=Include(uids=(uid,)), exclude=Exclude(uids=(uid,)))
    assert not r.matches(user(uid))


def test_five_percent_share_of_100k() -> None:
    r = release(percent=5)
    inside = sum(r.matches(user(f"user-{i}")) for i in range(100_000))
    assert 4_700 <= inside <= 5_300, inside


def test_hundredth_of_a_percent_granularity() -> None:
    assert threshold(0.01) == 1 and threshold(12.34) == 1234 and threshold(100) == 10_000
    r = release(percent=0.01)
    inside = sum(r.matches(user(f"u{i}")) for i in range(200_000))
    assert 0 < inside < 60  # ~20 expected


def test_salt_changes_the_population() -> None:
    a = {i for i in range(5000) if release(percent=10, salt="a").matches(user(f"u{i}"))}
    b = {i for i in range(5000) if release(percent=10, salt="b").matches(user(f"u{i}"))}
    assert a != b


def test_filters_and_whitelist() -> None:
    r = release(
        percent=100,
        include=Include(
            uids=("boss",),
            regions=("r1",),
            platforms=("android",),
            app_versions=(VersionRange.parse(">=5.2,<6"),),
        ),
    )
    assert r.matches(user("x", platform="android", version="5.3.1"))
    assert not r.matches(user("x", platform="ios", version="5.3.1"))
    assert not r.matches(user("x", platform="android", version="6.0"))
    assert not r.matches(user("x", platform="android", version="5.3", region="r2"))
    assert r.matches(user("boss", platform="web", version="1.0", region=None))


def test_first_running_release_wins() -> None:
    paused = release("a", 100, state="paused")
    draft = release("b", 100, state="draft")
    later = release("c", 100)
    assert first_match((draft, paused, later), user("u")) is paused
    assert first_match((draft,), user("u")) is None


release_sets = st.lists(
    st.builds(
        lambda i, pct, plats, vers, regions, inc, exc, state: release(
            f"rel-{i}",
            pct,
            include=Include(
                uids=tuple(inc),
                regions=tuple(regions),
                platforms=tuple(plats),
                app_versions=tuple(VersionRange.parse(v) for v in vers),
            ),
            exclude=Exclude(uids=tuple(exc)),
            state=state,
        ),
        st.integers(0, 99),
        st.sampled_from([0, 0.01, 5, 50, 100]),
        st.lists(st.sampled_from(["ios", "android", "web"]), max_size=2),
        st.lists(st.sampled_from([">=5.0,<6", "<5", "==6.1"]), max_size=2),
        st.lists(st.sampled_from(["r1", "r2"]), max_size=1),
        st.lists(st.sampled_from(["u1", "u2", "u3"]), max_size=2),
        st.lists(st.sampled_from(["u1", "u2", "u4"]), max_size=2),
        st.sampled_from(["running", "paused", "draft", "rolled_back"]),
    ),
    max_size=6,
    unique_by=lambda r: r.name,
)


@given(
    releases=release_sets,
    users=st.lists(
        st.builds(
            user,
            st.sampled_from(["u1", "u2", "u3", "u4", "u5", "someone-else"]) | uids,
            st.sampled_from(["ios", "android", "web"]),
            st.sampled_from(["4.9", "5.0", "5.9.9", "6.1"]),
            st.sampled_from(["r1", "r2", None]),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_compiled_rules_decide_as_first_match(
    releases: list[Release], users: list[UserContext]
) -> None:
    """The scheduler's compiled RuleSet (profile cache, whitelist path) never disagrees with
    the plain rule walk, including for repeat visitors served from the cache."""
    compiled = RuleSet(tuple(releases))
    for u in users + users:
        assert compiled.first(u) is first_match(tuple(releases), u)


@given(
    releases=release_sets,
    u=st.builds(
        user,
        st.sampled_from(["u1", "u2", "u3", "u4", "someone-else"]) | uids,
        st.sampled_from(["ios", "android", "web"]),
        st.sampled_from(["4.9", "5.0", "6.1"]),
        st.sampled_from(["r1", "r2", None]),
    ),
)
def test_explain_agrees_with_the_decision(releases: list[Release], u: UserContext) -> None:
    """An operator's "why" never tells a different story from the scheduler's choice."""
    verdicts = explain(tuple(releases), u)
    assert [v.release for v in verdicts] == [r.name for r in releases]
    chosen = [v.release for v in verdicts if v.chosen]
    found = first_match(tuple(releases), u)
    assert chosen == ([found.name] if found is not None else [])
    for v, r in zip(verdicts, releases, strict=True):
        assert v.bucket == bucket(r.effective_salt, u.uid) and v.cutoff == threshold(r.percent)
        if v.outcome in ("in_percent", "outside_percent"):
            assert (v.outcome == "in_percent") == (v.bucket < v.cutoff)


@given(
    releases=release_sets,
    u=st.builds(
        user,
        st.sampled_from(["u1", "u2", "u3", "u4", "someone-else"]) | uids,
        st.sampled_from(["ios", "android", "web"]),
        st.sampled_from(["4.9", "5.0", "6.1"]),
        st.sampled_from(["r1", "r2", None]),
    ),
)
def test_one_verdict_walk_decides_everything(releases: list[Release], u: UserContext) -> None:
    """``Rule.verdict`` is the walk: matching, explain and the compiled rule set read it."""
    uid_hash = hash64(u.uid)
    outcomes = [r.rule.verdict(u, bucket(r.effective_salt, u.uid)) for r in releases]
    assert [v.outcome for v in explain(tuple(releases), u)] == outcomes
    for r, outcome in zip(releases, outcomes, strict=True):
        assert r.rule.matches(u, uid_hash) == (outcome in ("listed", "in_percent"))
        # The filter step is the profile part of the walk, and nothing else.
        if r.rule.filtered(u) is None and outcome not in ("not_routing", "excluded", "listed"):
            assert outcome in ("in_percent", "outside_percent")
    taking = [r for r, o in zip(releases, outcomes, strict=True) if o in ("listed", "in_percent")]
    assert RuleSet(tuple(releases)).first(u) is (taking[0] if taking else None)


def test_explain_names_each_reason() -> None:
    releases = (
        release("off", 100, state="draft"),
        release("no-vip", 100, exclude=Exclude(uids=("vip",))),
        release("south", 100, include=Include(regions=("r2",))),
        release("android", 100, include=Include(platforms=("android",))),
        release("v6", 100, include=Include(app_versions=(VersionRange.parse(">=6"),))),
        release("none", 0),
        release("all", 100),
        release("later", 100),
    )
    got = {v.release: (v.outcome, v.chosen) for v in explain(releases, user("vip"))}
    assert got == {
        "off": ("not_routing", False),
        "no-vip": ("excluded", False),
        "south": ("other_region", False),
        "android": ("other_platform", False),
        "v6": ("other_version", False),
        "none": ("outside_percent", False),
        "all": ("in_percent", True),
        "later": ("in_percent", False),  # in, but an earlier release fixed the track
    }
    listed = release("beta", 0, include=Include(uids=("vip",), platforms=("web",)))
    assert explain((listed,), user("vip"))[0][2:] == ("listed", bucket("beta", "vip"), 0, True)


@pytest.mark.parametrize(
    "text,ok",
    [
        ("1", True),
        ("1.2.3.4", True),
        ("1.2.3.4.5", False),
        ("v1", False),
        ("", False),
        ("1..2", False),
        ("1.2-beta", False),
        ("\u0661.2.3", False),  # Arabic-Indic one: int() reads it, no client sends it
        ("1.\uff12", False),  # fullwidth two
    ],
)
def test_version_parse(text: str, ok: bool) -> None:
    if ok:
        Version.parse(text)
    else:
        with pytest.raises(ValueError):
            Version.parse(text)


def test_version_order_and_ranges() -> None:
    assert Version.parse("1.10") > Version.parse("1.9")
    assert Version.parse("2") == Version.parse("2.0.0")
    assert VersionRange.parse("5.1").contains(Version.parse("5.1.0"))
    assert not VersionRange.parse("!=5.1").contains(Version.parse("5.1"))
    with pytest.raises(ValueError):
        VersionRange.parse(">=5.2,~6")


def test_release_validation_reports_everything() -> None:
    problems: list[str] = []
    build(
        Release,
        {"name": "Bad", "target": {}, "percent": 5.005, "steps": [10, 5, 120], "state": "live"},
        "gray.releases[0]",
        problems,
    )
    text = "\n".join(problems)
    for needle in ("name", "target: set exactly one", "state: expected one of"):
        assert needle in text, text
