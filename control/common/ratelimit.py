"""Per-client-IP token buckets, bounded in memory."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable


def client_key(ip: str | None) -> str:
    """Whose bucket a request spends: an IPv4 address, or an IPv6 address's /64 (a
    subscriber gets a whole /64 and may use a new address for every request)."""
    if not ip:
        return "unknown"
    if ":" not in ip:
        return ip  # IPv4: the common case, kept cheap
    return _ipv6_key(ip)


@functools.lru_cache(maxsize=65_536)  # parsing an IPv6 address costs a request a few us
def _ipv6_key(ip: str) -> str:
    try:
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class TokenBuckets:
    """``allow(key)`` returns 0 when a request may go ahead, else seconds to wait."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, at]

    def allow(self, key: str) -> float:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)  # the least recently seen client
            bucket = [self.burst, now]
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate
