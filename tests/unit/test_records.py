"""Stored presence records, pure: packing round-trips, and a batch of stored values
splits into exactly its well-formed records even when some values are not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control.presence.model import SEP, Locations, Presence, split_records

IDS = st.text(alphabet="abcdefghij0123456789-_.", min_size=1, max_size=8)
ENTRIES = st.builds(
    Presence,
    uid=IDS,
    device=IDS,
    node=IDS,
    conn=IDS,
    epoch=st.integers(min_value=0, max_value=10**6),
    status=st.sampled_from(["online", "busy", "away", "invisible"]),
    region=st.text(alphabet="abc-", max_size=5),
    platform=st.text(alphabet="xyz", max_size=5),
    last_seen=st.just(0.0),  # not stored: the expiry index holds it
)
# What a value written by hand or by another version might hold.
JUNK = st.sampled_from(
    [
        "u1\x1fd1\x1fn1\x1fc1\x1f1\x1fonline\x1fr\x1fios",  # the old eight-field record
        "garbage",
        "a\x1fb",
        "a\x1fb\x1fc",  # three fields, but no rest inside
        "u\x1fn\x1fd\x1ec\x1e1\x1eonline\x1er\x1eios\x1fextra",
    ]
)


@given(ENTRIES)
def test_pack_round_trips(entry: Presence) -> None:
    assert Presence.unpack(entry.pack()) == entry


@given(st.lists(st.lists(ENTRIES, min_size=1, max_size=3), max_size=8), st.lists(JUNK, max_size=3))
def test_malformed_values_are_skipped_and_shift_nothing(
    users: list[list[Presence]], junk: list[str]
) -> None:
    good = [SEP.join(e.pack() for e in entries) for entries in users]
    values = good[: len(good) // 2] + junk + good[len(good) // 2 :]
    fields, skipped = split_records(values)
    assert skipped == len(junk)
    found = Locations([fields])
    expected: dict[str, list[Presence]] = {}
    for entries in users:
        for e in entries:
            known = expected.setdefault(e.uid, [])
            if e not in known:  # a record that came back twice (a uid asked twice) is one
                known.append(e)
    assert {u: found[u] for u in found} == expected
    assert found.by_node() == {
        n: {e.uid for es in users for e in es if e.node == n}
        for n in {e.node for es in users for e in es}
    }
