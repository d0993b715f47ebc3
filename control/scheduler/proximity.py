"""Where a client is and which regions are nearest to it. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RegionMap:
    """Client IP -> region, and the region preference matrix.

    An IP is placed by the CIDR table first (longest prefix wins: operators' own networks
    and exceptions), then by ``geo`` — where a geo database says the IP is, most specific
    name first (``CN-GD``, ``CN``, ``continent:AS``) — through ``places``, else the default.
    """

    known: tuple[str, ...]
    default: str | None = None
    cidrs: Mapping[Network, str] = field(default_factory=dict)
    preference: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    geo: Callable[[str], tuple[str, ...]] | None = None
    places: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Per IP version: prefix lengths longest first, each a dict of network int -> region.
        tables: dict[int, list[tuple[int, dict[int, str]]]] = {4: [], 6: []}
        by_len: dict[tuple[int, int], dict[int, str]] = {}
        for net, region in self.cidrs.items():
            by_len.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = region
        for (version, plen), table in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
            tables[version].append((plen, table))
        object.__setattr__(self, "_tables", tables)
        object.__setattr__(self, "_locate", lru_cache(maxsize=65_536)(self._locate_uncached))
        ranks = {r: self._rank(r) for r in self.known}
        object.__setattr__(self, "_ranks", ranks)
        object.__setattr__(self, "_unplaced", tuple(sorted(self.known)))

    def _locate_uncached(self, ip: str) -> str | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        bits = 32 if addr.version == 4 else 128
        value = int(addr)
        for plen, table in self._tables[addr.version]:  # type: ignore[attr-defined]
            key = (value >> (bits - plen)) << (bits - plen) if plen else 0
            region = table.get(key)
            if region is not None:
                return str(region)
        if self.geo is not None:
            for place in self.geo(str(addr)):
                region = self.places.get(place)
                if region is not None:
                    return region
        return None

    def region_of(self, ip: str | None) -> str | None:
        """The region the client's IP maps to, else the default region, else None."""
        if ip:
            found = self._locate(ip)  # type: ignore[attr-defined]
            if found is not None:
                return str(found)
        return self.default

    def placed_by(self, ip: str | None) -> tuple[str | None, str]:
        """The region for ``ip`` and what placed it there: ``ip`` (the CIDR table or the
        geo database), ``default``, or ``none`` (for operators; region_of is the hot path)."""
        found = self._locate(ip) if ip else None  # type: ignore[attr-defined]
        if found is not None:
            return str(found), "ip"
        return (self.default, "default") if self.default else (None, "none")

    def _rank(self, region: str) -> tuple[str, ...]:
        ranked = list(self.preference.get(region, (region,)))
        if region not in ranked:
            ranked.insert(0, region)
        ranked += [r for r in sorted(self.known) if r not in ranked]
        return tuple(ranked)

    def ranking(self, region: str | None) -> tuple[str, ...]:
        """Regions to try, nearest first: the matrix row, then every other known region."""
        if region is None:
            return self._unplaced  # type: ignore[attr-defined]
        return self._ranks.get(region) or self._rank(region)  # type: ignore[attr-defined]


def client_ip(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str | None:
    """The client's address: the peer, or from X-Forwarded-For when the peer is trusted.

    Walks X-Forwarded-For right to left past trusted proxies, so a client cannot pick its
    own address by sending the header itself.
    """
    if not trusted or not peer or not forwarded_for:
        return peer
    if not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    current = peer
    for hop in reversed(hops):
        address = _hop_address(hop)
        if address is None:
            return current  # garbage in the header: stop at the last address we trust
        current = address
        if not _is_trusted(address, trusted):
            return address
    return current


def _hop_address(hop: str) -> str | None:
    """The address in one X-Forwarded-For entry: ``1.2.3.4``, ``2001:db8::1``, or with a
    port as some proxies and CDNs write it (``1.2.3.4:5678``, ``[2001:db8::1]:5678``)."""
    if hop.startswith("["):
        address, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        hop = address
    elif hop.count(":") == 1:
        hop, _, port = hop.partition(":")
        if not port.isdigit():
            return None
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _is_trusted(ip: str, trusted: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in trusted)
