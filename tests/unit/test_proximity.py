from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.scheduler.proximity import RegionMap, client_ip

NETS = {
    ipaddress.ip_network("10.0.0.0/8"): "wide",
    ipaddress.ip_network("10.1.0.0/16"): "narrow",
    ipaddress.ip_network("2001:db8::/32"): "v6",
}


def test_longest_prefix_wins() -> None:
    rm = RegionMap(known=("wide", "narrow", "v6", "home"), default="home", cidrs=NETS)
    assert rm.region_of("10.1.2.3") == "narrow"
    assert rm.region_of("10.2.2.3") == "wide"
    assert rm.region_of("2001:db8::1") == "v6"
    assert rm.region_of("::ffff:10.1.0.9") == "narrow"
    assert rm.region_of("192.0.2.1") == "home"
    assert rm.region_of("not-an-ip") == "home"
    assert RegionMap(known=("a",)).region_of("192.0.2.1") is None


def test_unknown_region_ranks_everything() -> None:
    rm = RegionMap(known=("b", "a"))
    assert rm.ranking(None) == ("a", "b")
    assert rm.ranking("b") == ("b", "a")


TRUSTED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.9.0.0/16"))


def test_forwarded_for_only_from_trusted_peers() -> None:
    assert client_ip("203.0.113.5", "198.51.100.1", TRUSTED) == "203.0.113.5"
    assert client_ip("127.0.0.1", "198.51.100.1", TRUSTED) == "198.51.100.1"
    # A client forging the header in front of a trusted chain is not believed.
    assert client_ip("127.0.0.1", "1.1.1.1, 198.51.100.1, 10.9.0.4", TRUSTED) == "198.51.100.1"
    assert client_ip("127.0.0.1", "garbage", TRUSTED) == "127.0.0.1"
    assert client_ip("127.0.0.1", None, TRUSTED) == "127.0.0.1"


@pytest.mark.parametrize(
    "header,client",
    [
        ("198.51.100.1:5678", "198.51.100.1"),  # some proxies and CDNs add the port
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("198.51.100.1:5678, 10.9.0.4:80", "198.51.100.1"),  # through a trusted hop
        ("[2001:db8::7", "127.0.0.1"),  # broken: stop at the last address trusted
        ("198.51.100.1:port", "127.0.0.1"),
    ],
)
def test_forwarded_for_entries_with_ports(header: str, client: str) -> None:
    assert client_ip("127.0.0.1", header, TRUSTED) == client
    assert client_ip("127.0.0.1", "198.51.100.1", ()) == "127.0.0.1"


@given(st.text(max_size=80))
def test_any_forwarded_for_gives_the_peer_or_an_address(header: str) -> None:
    found = client_ip("127.0.0.1", header, TRUSTED)
    assert found is not None
    ipaddress.ip_address(found)  # always an address, whatever the header held
