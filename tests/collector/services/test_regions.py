"""Regions: ISO 3166-2 codes, from a city database (MaxMind's or DB-IP's layout) or
declared, never another country's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from collector.services.geo import GeoDatabaseError
from collector.services.regions import CityRegions, open_city_regions, region_code, region_of


def _mmdb(path: Path, records: dict[str, dict[str, Any]]) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True)
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


@pytest.mark.parametrize(
    ("text", "code"),
    [("CN-HA", "CN-HA"), (" cn-ha ", "CN-HA"), ("CN-BJ", "CN-BJ"), ("US-CA", "US-CA"),
     ("CN-ZZ", None), ("CN", None), ("Henan", None), ("CN-HAX1", None), (None, None),
     (41, None), ("", None)],
)  # fmt: skip
def test_a_region_is_a_subdivision_iso_3166_2_knows(text: object, code: str | None) -> None:
    assert region_code(text) == code


def test_a_region_belongs_to_its_country() -> None:
    assert region_of("CN", "CN-HA") == "CN-HA"
    assert region_of("US", "CN-HA") is None


@pytest.fixture
def city(tmp_path: Path) -> CityRegions:
    found = CityRegions(_mmdb(tmp_path / "city.mmdb", {
        # GeoLite2-City: the subdivision's ISO code
        "1.192.0.0/16": {"country": {"iso_code": "CN"},
                         "subdivisions": [{"iso_code": "HA", "names": {"en": "Henan"}}]},
        # DB-IP City Lite: the same layout, names without codes
        "1.193.0.0/16": {"country": {"iso_code": "CN"},
                         "subdivisions": [{"names": {"en": "Henan"}}]},
        "1.194.0.0/16": {"country": {"iso_code": "CN"},
                         "subdivisions": [{"names": {"en": "Inner Mongolia"}}]},
        "1.195.0.0/16": {"country": {"iso_code": "CN"},
                         "subdivisions": [{"names": {"en": "Guangxi Zhuang Autonomous Region"}}]},
        # ip-location-db's flat layout of DB-IP's data
        "1.196.0.0/16": {"country_code": "CN", "state1": "Shanghai"},
        # placed in another country than the network's; a name nobody knows; no subdivision
        "8.8.8.0/24": {"country": {"iso_code": "US"},
                       "subdivisions": [{"iso_code": "CA"}]},
        "1.197.0.0/16": {"country": {"iso_code": "CN"},
                         "subdivisions": [{"names": {"en": "Atlantis"}}]},
        "1.198.0.0/16": {"country": {"iso_code": "CN"}},
        "10.0.0.0/8": {"country": {"iso_code": "CN"}, "subdivisions": [{"iso_code": "HA"}]},
    }))  # fmt: skip
    yield found
    found.close()


@pytest.mark.parametrize(
    ("ip", "cc", "region"),
    [("1.192.3.4", "CN", "CN-HA"), ("1.193.3.4", "CN", "CN-HA"), ("1.194.3.4", "CN", "CN-NM"),
     ("1.195.3.4", "CN", "CN-GX"), ("1.196.3.4", "CN", "CN-SH"),
     ("::ffff:1.192.3.4", "CN", "CN-HA"),
     ("8.8.8.8", "CN", None), ("8.8.8.8", "US", "US-CA"), ("1.197.3.4", "CN", None),
     ("1.198.3.4", "CN", None), ("10.1.2.3", "CN", None), ("9.9.9.9", "CN", None),
     ("testclient", "CN", None)],
)  # fmt: skip
def test_the_city_database_places_an_address_in_its_networks_country(
    city: CityRegions, ip: str, cc: str, region: str | None
) -> None:
    assert city.region(ip, cc) == region


def test_no_city_database_no_regions_and_a_bad_one_fails_at_start(tmp_path: Path) -> None:
    assert open_city_regions(None) is None
    (tmp_path / "bad.mmdb").write_bytes(b"not a database")
    with pytest.raises(GeoDatabaseError, match=r"bad\.mmdb"):
        open_city_regions(tmp_path / "bad.mmdb")
