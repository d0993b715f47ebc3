"""Propagation's pure report and the scheduler's served-releases publisher (on the
embedded key-value store, with an injected clock)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from control.cli.gray import status_text
from control.common.kv.embedded import EmbeddedKV
from control.scheduler.served import (
    SERVED,
    ServedPublisher,
    ServedReleases,
    propagation,
    served_records,
)

PREFIX = "/t-served"


def served(sid: str, **releases: int) -> ServedReleases:
    return ServedReleases(sid, MappingProxyType(releases), 1.0)


def test_propagation_says_who_serves_the_current_revision_and_who_lags() -> None:
    report = propagation(
        {"canary": 7, "other": 3},
        [served("s2", canary=5, other=3), served("s1", canary=7, other=3), served("s3")],
    )
    assert [s["id"] for s in report["schedulers"]] == ["s1", "s2", "s3"]
    assert report["releases"]["canary"] == {
        "revision": 7,
        "serving": ["s1"],
        "lagging": [{"id": "s2", "revision": 5}, {"id": "s3", "revision": 0}],
    }
    assert report["releases"]["other"]["serving"] == ["s1", "s2"]
    assert report["releases"]["other"]["lagging"] == [{"id": "s3", "revision": 0}]


def test_record_round_trips_and_a_bad_one_is_refused() -> None:
    record = served("s1", canary=7)
    assert SERVED.parse(SERVED.serialize(record), "k") == record
    bad_ones = (b"[]", b'{"id": ""}', b'{"id": "s", "releases": {"a": "7"}}')
    for bad in bad_ones:
        with pytest.raises(ValueError):
            SERVED.parse(bad, "k")


def test_status_text_has_the_serving_line() -> None:
    release = {
        "name": "canary",
        "state": "running",
        "target": {"pool": "canary"},
        "percent": 10,
        "steps": [],
        "step_interval_s": 600,
        "include": {"regions": [], "platforms": [], "app_versions": [], "uids": []},
        "exclude": {"uids": []},
        "salt": "",
    }
    spread = {"revision": 7, "serving": ["s1"], "lagging": [{"id": "s2", "revision": 5}]}
    answer = {"release": release, "revision": 7, "step": {}, "propagation": spread}
    text = status_text(answer)
    assert "serving   1 of 2 schedulers on revision 7; lagging: s2 on 5" in text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_publisher_writes_on_change_at_most_once_per_interval_on_its_lease() -> None:
    kv = EmbeddedKV()
    await kv.connect()
    try:
        clock = Clock()
        what = {"canary": 4}
        pub = ServedPublisher(kv, PREFIX, "s1", lambda: what, 9, clock=clock, wall=lambda: 5.0)
        records = served_records(kv, PREFIX)
        assert (await pub.run_once()).startswith("published")
        stored = await records.get("s1")
        assert stored is not None and stored.lease == pub.lease != 0
        assert stored.record == ServedReleases("s1", {"canary": 4}, 5.0)
        assert await pub.run_once() == "unchanged"
        what = {"canary": 6}
        clock.now += 0.5
        assert "waiting" in await pub.run_once()
        assert (await records.get("s1")).record.releases == {"canary": 4}  # type: ignore[union-attr]
        assert 0.4 < pub.due_in() <= 0.5
        clock.now += 0.5
        assert (await pub.run_once()).startswith("published")
        assert (await records.get("s1")).record.releases == {"canary": 6}  # type: ignore[union-attr]
        # The lease lost behind its back: granted again and written again.
        await kv.revoke_lease(pub.lease)
        assert await records.get("s1") is None
        clock.now += pub.keepalive_s
        assert (await pub.run_once()).startswith("published")
        assert (await records.get("s1")) is not None
        await pub.close()
        assert await records.get("s1") is None
    finally:
        await kv.close()
