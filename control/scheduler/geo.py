"""Placing clients with a MaxMind DB: the region map built over it, and the loop that picks
up a replaced database file (``geoipupdate`` renames a new one over it every week or so)
without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from control.common.errors import ConfigError
from control.common.geoip import GeoDatabase, GeoError, GeoInfo
from control.scheduler.config import GeoIPSettings, RegionSettings
from control.scheduler.engine import Engine
from control.scheduler.proximity import RegionMap

log = logging.getLogger(__name__)


def open_geo(settings: GeoIPSettings) -> GeoDatabase | None:
    """The configured database, or None when placing by geo is off."""
    if not settings.database:
        return None
    try:
        return GeoDatabase(settings.database)
    except GeoError as exc:  # the file went away after the config was checked
        raise ConfigError([f"regions.geoip.database: {exc}"]) from None


def build_region_map(regions: RegionSettings, geo: GeoDatabase | None) -> RegionMap:
    return RegionMap(
        known=regions.known,
        default=regions.default or None,
        cidrs=regions.cidrs,
        preference=regions.preference,
        geo=geo.places if geo is not None else None,
        places=regions.geoip.places,
    )


class GeoReloader:
    """Swaps a new region map into the engine when the database file is replaced. A new
    file that does not open (half written, corrupt) is logged and the open one kept."""

    def __init__(
        self,
        regions: RegionSettings,
        engine: Engine,
        geo: GeoDatabase,
        on_swap: Callable[[GeoInfo], None] = lambda info: None,
    ) -> None:
        self.regions = regions
        self.engine = engine
        self.geo = geo
        self.on_swap = on_swap
        self.interval_s = regions.geoip.reload_s

    def run_once(self) -> bool:
        """One look at the file; True when a new database was swapped in."""
        if not self.geo.changed():
            return False
        try:
            fresh = GeoDatabase(self.geo.info.path)
        except GeoError as exc:
            log.warning("geoip: keeping the open database: %s", exc)
            return False
        old, self.geo = self.geo, fresh
        # One assignment: a request sees the old map or the new one, never a mix.
        self.engine.region_map = build_region_map(self.regions, fresh)
        old.close()
        self.on_swap(fresh.info)
        log.info(
            "geoip: now %s (%s, built %d)",
            fresh.info.path,
            fresh.info.database_type,
            fresh.info.build_epoch,
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
            if not stop.is_set():
                self.run_once()

    def close(self) -> None:
        self.geo.close()
