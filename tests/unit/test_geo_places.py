"""Placing an IP by geo, pure: the region map over a stand-in for the database's answer."""

from __future__ import annotations

import ipaddress

from control.scheduler.proximity import RegionMap

PLACES = {
    "192.0.2.1": ("CN-GD", "CN", "continent:AS"),
    "192.0.2.2": ("CN-BJ", "CN", "continent:AS"),
    "192.0.2.3": ("FR", "continent:EU"),
    "192.0.2.4": ("BR", "continent:SA"),
    "10.1.0.1": ("CN-GD", "CN", "continent:AS"),
}
asked: list[str] = []


def geo(ip: str) -> tuple[str, ...]:
    asked.append(ip)
    return PLACES.get(ip, ())


MAP = RegionMap(
    known=("south", "north", "eu", "office", "home"),
    default="home",
    cidrs={ipaddress.ip_network("10.1.0.0/16"): "office"},
    geo=geo,
    places={"CN-GD": "south", "CN": "north", "continent:EU": "eu"},
)


def test_most_specific_place_wins_then_default() -> None:
    assert MAP.region_of("192.0.2.1") == "south"  # subdivision before country
    assert MAP.region_of("192.0.2.2") == "north"  # no rule for CN-BJ: the country's
    assert MAP.region_of("192.0.2.3") == "eu"  # continent
    assert MAP.region_of("192.0.2.4") == "home"  # placed, but no rule: the default
    assert MAP.region_of("192.0.2.99") == "home"  # the database does not know it


def test_cidr_table_before_geo() -> None:
    # Operators' own networks override where a database thinks they are.
    assert MAP.region_of("10.1.0.1") == "office"


def test_mapped_v4_asks_for_the_v4_address_once() -> None:
    asked.clear()
    assert MAP.region_of("::ffff:192.0.2.1") == "south"
    assert MAP.region_of("::ffff:192.0.2.1") == "south"
    assert asked == ["192.0.2.1"]  # cached per address
    assert MAP.region_of("not-an-ip") == "home"
    assert asked == ["192.0.2.1"]
