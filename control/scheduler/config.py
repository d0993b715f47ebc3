"""The scheduler's configuration sections: its listener and limits, regions and GeoIP."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from control.common.auth import TokenTable
from control.common.config import (
    REGION_PATTERN,
    BackoffSettings,
    ClientAuthSettings,
    ClusterSettings,
    CorsSettings,
    HeartbeatSettings,
    Network,
    RegistrySettings,
    TicketSettings,
    TlsSettings,
)
from control.common.geoip import CONTINENT, GeoDatabase, GeoError
from control.common.schema import setting
from control.gray.config import GraySettings

# A place a geo database names: country (ISO 3166-1), country-subdivision (ISO 3166-2),
# or a continent code.
PLACE_PATTERN = r"[A-Z]{2}(-[A-Z0-9]{1,3})?|" + CONTINENT + r"[A-Z]{2}"


@dataclass(frozen=True)
class RateLimitSettings:
    rate_per_s: float = setting(20.0, "endpoint requests per second per client IP", gt=0)
    burst: float = setting(40.0, "bucket size per client IP", ge=1)
    max_clients: int = setting(100_000, "client IPs tracked at once", ge=1)


@dataclass(frozen=True)
class SchedulerSettings:
    host: str = setting("127.0.0.1", "listen address")
    port: int = setting(8080, "listen port", ge=0, le=65535)
    trusted_proxies: tuple[Network, ...] = setting((), "peers whose X-Forwarded-For is believed")
    fallbacks: int = setting(2, "fallback nodes per answer", ge=0, le=8)
    retry_after_s: int = setting(5, "Retry-After on 503", ge=1, le=3600)
    rebuild_s: float = setting(0.05, "coalesce registry changes this long", ge=0, le=5)
    rate_limit: RateLimitSettings = setting(RateLimitSettings(), "per-client-IP token bucket")
    shutdown_grace_s: float = setting(
        0.0,
        "on SIGTERM, answer /readyz 503 and keep serving this long before stopping, so a "
        "load balancer stops sending first (0: stop at once)",
        ge=0,
        le=300,
    )
    max_event_tails: int = setting(
        16, "open GET /v1/presence/events at once (each holds a shard connection)", ge=1, le=1024
    )
    tls: TlsSettings = setting(
        TlsSettings(), "the scheduler's certificate: HTTPS for its API, admin API and /metrics"
    )
    demo: bool = setting(False, "serve the demo web client at /demo/ (imctl up always does)")


@dataclass(frozen=True)
class GeoIPSettings:
    database: str = setting(
        "", "MaxMind DB file, GeoIP2/GeoLite2 City or Country (empty: off)", max_len=4096
    )
    places: Mapping[str, str] = setting(
        MappingProxyType({}), "place -> region; a place is CC-SUB (ISO 3166-2), CC or continent:XX"
    )
    reload_s: float = setting(60.0, "look for a replaced database file this often", gt=0, le=86400)

    def check(self, path: str) -> list[str]:
        problems = []
        for place in self.places:
            if not re.fullmatch(PLACE_PATTERN, place):
                problems.append(
                    f"{path}.places.{place}: expected a place like CN, CN-GD or continent:EU"
                )
        if not self.database:
            if self.places:
                problems.append(f"{path}.database: required when places are given")
            return problems
        if not self.places:
            problems.append(f"{path}.places: empty, so the database would place no client")
        try:
            GeoDatabase(self.database).close()
        except GeoError as exc:
            problems.append(f"{path}.database: {exc}")
        return problems


@dataclass(frozen=True)
class RegionSettings:
    known: tuple[str, ...] = setting(("local",), "every region name", min_len=1)
    default: str = setting("", "region for clients no rule places (empty: none)")
    cidrs: Mapping[Network, str] = setting(MappingProxyType({}), "client network -> region")
    geoip: GeoIPSettings = setting(GeoIPSettings(), "client IP -> place, after the CIDRs")
    preference: Mapping[str, tuple[str, ...]] = setting(
        MappingProxyType({}), "region -> regions to try, nearest first"
    )

    def check(self, path: str) -> list[str]:
        problems = []
        known = set(self.known)
        for i, name in enumerate(self.known):
            if not re.fullmatch(REGION_PATTERN, name):
                problems.append(f"{path}.known[{i}]: bad region name {name!r}")
        if self.default and self.default not in known:
            problems.append(f"{path}.default: unknown region {self.default!r}")
        for net, region in self.cidrs.items():
            if region not in known:
                problems.append(f"{path}.cidrs.{net}: unknown region {region!r}")
        for place, region in self.geoip.places.items():
            if region not in known:
                problems.append(f"{path}.geoip.places.{place}: unknown region {region!r}")
        for region, ranked in self.preference.items():
            if region not in known:
                problems.append(f"{path}.preference.{region}: unknown region {region!r}")
            for j, other in enumerate(ranked):
                if other not in known:
                    problems.append(f"{path}.preference.{region}[{j}]: unknown region {other!r}")
            if len(set(ranked)) != len(ranked):
                problems.append(f"{path}.preference.{region}: a region is listed twice")
        return problems


@dataclass(frozen=True)
class SchedulerConfig:
    """Everything the scheduler process reads, built from the aggregate settings by
    control/launch.py: the scheduler depends on its sections, never on the aggregate."""

    cluster: ClusterSettings
    registry: RegistrySettings
    scheduler: SchedulerSettings
    heartbeat: HeartbeatSettings
    backoff: BackoffSettings
    tickets: TicketSettings
    regions: RegionSettings
    gray: GraySettings
    client_auth: ClientAuthSettings
    cors: CorsSettings = CorsSettings()
    # Who may read /metrics (None: anyone), built once from admin.metrics and admin.tokens.
    metrics_readers: TokenTable | None = None
