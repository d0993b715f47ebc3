"""The PROXY protocol, version 2 (HAProxy's ``send-proxy-v2``): the binary header a load
balancer sends first on each connection it opens to a backend, naming the client's own
address. Pure: bytes in, a :class:`ProxyHeader` or :class:`ProxyHeaderError` out.

Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt (section 2.2).
Only version 2 is taken (version 1 is text and needs a line reader); TLVs are walked for
well-formedness and skipped. The reading side (off a socket, exactly the header's bytes)
is in common/proxied.py.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_LEN = 16  # signature, version/command, family/protocol, length
# HAProxy's own TLVs (unique id, ALPN, SSL details) stay well under this; a larger header
# is someone else's bytes.
MAX_PAYLOAD = 2048

_FAMILIES = {0x1: (4, 12), 0x2: (16, 36), 0x3: (None, 216)}  # family -> (ip bytes, size)

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY v2 header we take; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``local``: the balancer speaking for itself (a health check): no client address.
    ``proxy``: a relayed connection from ``source`` to ``destination`` (None when the
    balancer did not know them: family unspecified or a UNIX socket)."""

    command: Literal["local", "proxy"]
    source: Address | None
    destination: Address | None
    length: int  # bytes on the wire, the 16-byte prefix included


def header_length(prefix: bytes) -> int | None:
    """The whole header's length from its first bytes; None while fewer than 16 bytes are
    given and they agree with the signature so far. Raises as soon as they cannot."""
    n = min(len(prefix), len(SIGNATURE))
    if prefix[:n] != SIGNATURE[:n]:
        raise ProxyHeaderError("not a PROXY v2 header (bad signature)")
    if len(prefix) < PREFIX_LEN:
        return None
    version, command = prefix[12] >> 4, prefix[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}, expected 2")
    if command > 1:
        raise ProxyHeaderError(f"unknown PROXY command {command}")
    (payload,) = struct.unpack_from("!H", prefix, 14)
    if payload > MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY header of {payload} bytes, at most {MAX_PAYLOAD}")
    return PREFIX_LEN + payload


def parse(data: bytes) -> ProxyHeader:
    """One whole header, exactly ``header_length(data)`` bytes long."""
    length = header_length(data)
    if length is None or len(data) < length:
        raise ProxyHeaderError("truncated PROXY header")
    if len(data) > length:
        raise ProxyHeaderError("bytes after the PROXY header")
    command: Literal["local", "proxy"] = "proxy" if data[12] & 0x0F else "local"
    family, protocol = data[13] >> 4, data[13] & 0x0F
    payload = memoryview(data)[PREFIX_LEN:]
    if family not in (0, *_FAMILIES) or protocol > 2:
        raise ProxyHeaderError(f"unknown address family/protocol 0x{data[13]:02x}")
    source = destination = None
    used = 0
    if family:
        ip_len, used = _FAMILIES[family]
        if len(payload) < used:
            raise ProxyHeaderError(f"address block of {len(payload)} bytes, expected {used}")
        if command == "proxy" and protocol != 1:  # only a stream's addresses are ours
            raise ProxyHeaderError("PROXY header for a datagram or unknown protocol")
        if ip_len is not None:
            src = bytes(payload[:ip_len])
            dst = bytes(payload[ip_len : 2 * ip_len])
            sport, dport = struct.unpack_from("!HH", payload, 2 * ip_len)
            source = (str(ipaddress.ip_address(src)), sport)
            destination = (str(ipaddress.ip_address(dst)), dport)
    _walk_tlvs(payload[used:])
    if command == "local":  # the balancer's own connection: its addresses mean nothing
        source = destination = None
    return ProxyHeader(command, source, destination, length)


def _walk_tlvs(tlvs: memoryview) -> None:
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyHeaderError("truncated TLV in the PROXY header")
        (size,) = struct.unpack_from("!H", tlvs, at + 1)
        at += 3 + size
        if at > len(tlvs):
            raise ProxyHeaderError("TLV longer than the PROXY header")


def build(
    source: Address | None,
    destination: Address | None = None,
    *,
    local: bool = False,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A header as HAProxy sends it (for tests and the benchmark). ``source`` None with
    ``local`` False: family unspecified."""
    extra = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    if source is None:
        block, family = b"", 0x00
    else:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address((destination or ("0.0.0.0" if src.version == 4 else "::", 0))[0])
        dport = destination[1] if destination else 0
        block = src.packed + dst.packed + struct.pack("!HH", source[1], dport)
        family = 0x11 if src.version == 4 else 0x21
    payload = block + extra
    command = 0x20 if local else 0x21
    return SIGNATURE + struct.pack("!BBH", command, family, len(payload)) + payload
