"""Real MaxMind DB files for tests, written with mmdb-writer (the format MaxMind's readers
read; the records are shaped like GeoIP2 City ones)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def city(country: str, continent: str, subdivision: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"country": {"iso_code": country}, "continent": {"code": continent}}
    if subdivision:
        record["subdivisions"] = [{"iso_code": subdivision}]
    return record


# Documentation ranges (RFC 5737, RFC 3849), so no test depends on a real address's owner.
WORLD: dict[str, dict[str, Any]] = {
    "192.0.2.0/25": city("CN", "AS", "GD"),
    "192.0.2.128/25": city("CN", "AS", "BJ"),
    "198.51.100.0/24": city("FR", "EU"),
    "203.0.113.0/24": {"registered_country": {"iso_code": "US"}, "continent": {"code": "NA"}},
    "2001:db8::/32": city("JP", "AS"),
}


def write_geo_db(path: Path, networks: Mapping[str, Mapping[str, Any]] = WORLD) -> Path:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description="imctl test data",
    )
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), dict(record))
    # Written beside and renamed over, as geoipupdate does.
    tmp = path.with_suffix(".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(path)
    return path
