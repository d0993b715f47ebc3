"""The geo database adapter and its reload, on real MaxMind DB files."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.common.geoip import GeoDatabase, GeoError
from control.launch import scheduler_config
from control.scheduler.config import GeoIPSettings
from control.scheduler.geo import GeoReloader, open_geo
from control.scheduler.service import build_engine
from control.settings import parse_settings
from tests.geodb import city, write_geo_db


def test_places_most_specific_first(tmp_path: Path) -> None:
    db = GeoDatabase(str(write_geo_db(tmp_path / "city.mmdb")))
    assert db.info.database_type == "GeoIP2-City"
    assert db.places("192.0.2.7") == ("CN-GD", "CN", "continent:AS")
    assert db.places("192.0.2.200") == ("CN-BJ", "CN", "continent:AS")
    assert db.places("198.51.100.1") == ("FR", "continent:EU")
    # No country of its own (satellite, anycast): the registered country stands in.
    assert db.places("203.0.113.9") == ("US", "continent:NA")
    assert db.places("2001:db8::1") == ("JP", "continent:AS")
    assert db.places("10.0.0.1") == ()
    assert db.places("nonsense") == ()
    db.close()


@pytest.mark.parametrize("content", [b"", b"not a maxmind db" * 100])
def test_a_file_that_is_not_a_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mmdb"
    path.write_bytes(content)
    with pytest.raises(GeoError, match=r"bad\.mmdb"):
        GeoDatabase(str(path))
    with pytest.raises(GeoError, match=r"missing\.mmdb"):
        GeoDatabase(str(tmp_path / "missing.mmdb"))


def settings_for(path: Path) -> dict:  # type: ignore[type-arg]
    return {
        "regions": {
            "known": ["south", "north", "eu"],
            "geoip": {
                "database": str(path),
                "places": {"CN-GD": "south", "CN": "north", "continent:EU": "eu"},
            },
        }
    }


def test_engine_places_by_geo_and_picks_up_a_replaced_file(tmp_path: Path) -> None:
    path = write_geo_db(tmp_path / "city.mmdb")
    settings = parse_settings(settings_for(path))
    geo = open_geo(settings.regions.geoip)
    assert geo is not None
    engine = build_engine(scheduler_config(settings), geo)
    swapped = []
    reloader = GeoReloader(settings.regions, engine, geo, swapped.append)
    assert engine.region_map.region_of("192.0.2.7") == "south"
    assert engine.region_map.region_of("198.51.100.1") == "eu"
    assert reloader.run_once() is False  # nothing changed

    # Next week's file moved the range: GD's addresses now belong to France.
    write_geo_db(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU")})
    assert reloader.run_once() is True
    assert engine.region_map.region_of("192.0.2.7") == "eu"
    assert [info.path for info in swapped] == [str(path)]

    # A broken replacement is not taken: the open database keeps answering.
    path.with_suffix(".tmp").write_bytes(b"half written")
    path.with_suffix(".tmp").replace(path)
    assert reloader.run_once() is False
    assert engine.region_map.region_of("192.0.2.7") == "eu"
    assert len(swapped) == 1
    reloader.close()


def test_build_engine_opens_the_configured_database(tmp_path: Path) -> None:
    settings = parse_settings(settings_for(write_geo_db(tmp_path / "city.mmdb")))
    assert build_engine(scheduler_config(settings)).region_map.region_of("192.0.2.200") == "north"
    assert open_geo(GeoIPSettings()) is None
