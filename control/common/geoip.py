"""Where an IP address is, from a MaxMind DB file (GeoIP2 or GeoLite2, City or Country).

The file is memory-mapped and read-only, so a lookup is a pure function of the address for
as long as the file is open. ``geoipupdate`` replaces the file by renaming a new one over it:
the open map keeps reading the old inode, and ``changed()`` tells the owner to open the new
one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import maxminddb
from maxminddb import InvalidDatabaseError

from control.common.errors import FatalError

CONTINENT = "continent:"


class GeoError(FatalError):
    """The database file is missing, unreadable or not a MaxMind DB."""


@dataclass(frozen=True)
class GeoInfo:
    path: str
    database_type: str
    build_epoch: int
    ip_version: int


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class GeoDatabase:
    def __init__(self, path: str) -> None:
        try:
            self._stamp = _stamp(path)
            self._reader: Any = maxminddb.open_database(path)
            meta = self._reader.metadata()
        except (OSError, InvalidDatabaseError, ValueError) as exc:
            raise GeoError(f"cannot open MaxMind DB {path}: {exc}") from None
        self.info = GeoInfo(path, str(meta.database_type), int(meta.build_epoch), meta.ip_version)

    def places(self, ip: str) -> tuple[str, ...]:
        """Names for where ``ip`` is, most specific first: ``CN-GD`` (country and
        subdivision, ISO 3166-2), ``CN`` (country), ``continent:AS``. Empty when the file
        does not know the address (private ranges, a Country file asked for a v6 address)."""
        try:
            record = self._reader.get(ip)
        except ValueError:  # not an address, or IPv6 in an IPv4-only file
            return ()
        if not isinstance(record, dict):
            return ()
        found: list[str] = []
        country = _code(record.get("country"), "iso_code") or _code(
            record.get("registered_country"), "iso_code"
        )
        if country:
            subdivisions = record.get("subdivisions")
            if isinstance(subdivisions, list) and subdivisions:
                sub = _code(subdivisions[0], "iso_code")
                if sub:
                    found.append(f"{country}-{sub}")
            found.append(country)
        continent = _code(record.get("continent"), "code")
        if continent:
            found.append(CONTINENT + continent)
        return tuple(found)

    def changed(self) -> bool:
        """Whether the file on disk is no longer the one this reader has open."""
        try:
            return _stamp(self.info.path) != self._stamp
        except OSError:
            return False  # gone for a moment (being replaced): keep the open one

    def close(self) -> None:
        self._reader.close()


def _code(value: Any, key: str) -> str | None:
    if isinstance(value, dict):
        code = value.get(key)
        if isinstance(code, str) and code:
            return code.upper()
    return None
