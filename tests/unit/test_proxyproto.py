"""The PROXY v2 parser: what HAProxy sends round-trips, TLVs are skipped, and no bytes at
all make it raise anything but its own error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.common.proxyproto import (
    PREFIX_LEN,
    SIGNATURE,
    ProxyHeaderError,
    build,
    header_length,
    parse,
)

# What HAProxy 2.6 sent for a client 127.0.0.2:40000 to 127.0.0.1:8443 (send-proxy-v2).
HAPROXY_V4 = (
    SIGNATURE
    + b"\x21\x11\x00\x0c"
    + bytes([127, 0, 0, 2, 127, 0, 0, 1])
    + struct.pack("!HH", 40000, 8443)
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(tuple)


def test_haproxy_header_parses() -> None:
    header = parse(HAPROXY_V4)
    assert header.command == "proxy"
    assert header.source == ("127.0.0.2", 40000)
    assert header.destination == ("127.0.0.1", 8443)
    assert header.length == len(HAPROXY_V4) == 28


def test_local_command_has_no_client() -> None:
    header = parse(build(("10.0.0.1", 1), ("10.0.0.2", 2), local=True))
    assert header.command == "local" and header.source is None


def test_length_known_from_the_prefix_and_wrong_signature_seen_early() -> None:
    assert header_length(HAPROXY_V4[:5]) is None
    assert header_length(HAPROXY_V4[:PREFIX_LEN]) == 28
    with pytest.raises(ProxyHeaderError, match="signature"):
        header_length(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProxyHeaderError, match="signature"):
        header_length(b"\r\n\r\nX")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (HAPROXY_V4[:20], "truncated"),
        (HAPROXY_V4 + b"x", "after"),
        (SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "command"),
        (SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "datagram"),
        (SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "family"),
        (SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "address block"),
        (SIGNATURE + b"\x21\x11\xff\xff", "at most"),
        (SIGNATURE + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01\x00", "TLV"),
        (SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x09\x00", "TLV longer"),
    ],
)
def test_malformed_headers_name_what_is_wrong(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse(data)


@settings(max_examples=100)
@given(st.one_of(ipv4, ipv6), ports, ports, tlvs)
def test_valid_headers_round_trip_and_tlvs_are_skipped(
    ip: str, sport: int, dport: int, extra: tuple[tuple[int, bytes], ...]
) -> None:
    dst = "127.0.0.1" if ":" not in ip else "::1"
    data = build((ip, sport), (dst, dport), tlvs=extra)
    assert header_length(data[:PREFIX_LEN]) == len(data)
    header = parse(data)
    assert header.source is not None and header.destination is not None
    assert header.source[1] == sport and header.destination == (
        header.destination[0],
        dport,
    )
    import ipaddress

    assert ipaddress.ip_address(header.source[0]) == ipaddress.ip_address(ip)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_parsers_error(data: bytes) -> None:
    for candidate in (data, SIGNATURE + data, HAPROXY_V4[:16] + data):
        try:
            header_length(candidate)
            parse(candidate)
        except ProxyHeaderError:
            pass


@settings(max_examples=150)
@given(st.binary(min_size=1, max_size=60), st.integers(0, 27))
def test_corrupted_haproxy_headers_raise_only_the_parsers_error(noise: bytes, at: int) -> None:
    data = HAPROXY_V4[:at] + noise + HAPROXY_V4[at + len(noise) :]
    try:
        parse(data)
    except ProxyHeaderError:
        pass
