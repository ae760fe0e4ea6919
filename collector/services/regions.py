"""Regions: a measurement's subdivision (ISO 3166-2, e.g. ``CN-HA``, Henan).

Where a region comes from (docs/methodology.md, "Regions"):

1. ``geolocated``: the operator's city-level database (``--geoip-city-db``: a
   GeoLite2-City / GeoIP2-City or DB-IP City Lite ``.mmdb``), looked up at ingest
   with the address the network was located from, and forgotten with it. Only
   when that database places the address in the same country as the network.
   MaxMind's records carry the subdivision's ISO code; DB-IP's carry its English
   name only, which is matched against ISO 3166-2's names (pycountry), with the
   few names DB-IP writes otherwise (``Inner Mongolia`` for Nei Mongol...).
2. ``declared``: else what the probe declares (``run --region CN-HA``), when it
   is a subdivision ISO 3166-2 knows, of the network's country. A declared
   region counts only when someone vouched for it (a token given ``--region``,
   or ``probes vouch --region``), as a declared network does.

Nothing here logs or keeps an address.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Final, cast

import pycountry

from collector.services.geo import GeoDatabaseError, MmdbFile, Network, NetworkSource, locatable

REGION_RE: Final = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")


class RegionSource(StrEnum):
    GEOLOCATED = "geolocated"  # the operator's city database, from the probe's address
    DECLARED = "declared"  # what the probe says (--region): counts once vouched


# English names a city database writes where ISO 3166-2 (pycountry) has others.
_ALIASES: Final = {
    ("CN", "inner mongolia"): "CN-NM",
    ("CN", "tibet"): "CN-XZ",
    ("CN", "macau"): "CN-MO",
    ("CN", "macao"): "CN-MO",
    ("CN", "hong kong"): "CN-HK",
    ("CN", "guangxi"): "CN-GX",
    ("CN", "ningxia"): "CN-NX",
    ("CN", "xinjiang"): "CN-XJ",
}
# Words ISO 3166-2's romanized Chinese names add to the name people write.
_SUFFIXES: Final = ("sheng", "shi", "zizhiqu", "sar", "province", "municipality",
                    "autonomous region", "special administrative region")  # fmt: skip


def region_code(text: object) -> str | None:
    """*text* as a subdivision code ISO 3166-2 knows (``cn-ha`` -> ``CN-HA``), else None."""
    if not isinstance(text, str):
        return None
    code = text.strip().upper()
    if not REGION_RE.match(code):
        return None
    return code if _known(code) else None


# pycountry is untyped: its one lookup, typed here.
_subdivisions: Final = cast(Callable[..., Any], pycountry.subdivisions.get)


@cache
def _known(code: str) -> bool:
    return _subdivisions(code=code) is not None


def region_of(cc: str, region: object) -> str | None:
    """A region of country *cc*, or None (not a region, or another country's)."""
    code = region_code(region)
    return code if code is not None and code.startswith(f"{cc}-") else None


def _folded(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z ]+", " ", text)
    return " ".join(text.split())


@cache
def _names(cc: str) -> dict[str, str]:
    """Folded English names of *cc*'s subdivisions, with and without their suffix."""
    found: dict[str, str] = {}
    for sub in _subdivisions(country_code=cc) or ():
        name = _folded(sub.name)
        found.setdefault(name, sub.code)
        for suffix in _SUFFIXES:
            if name.endswith(" " + suffix):
                found.setdefault(name[: -len(suffix) - 1], sub.code)
    for (country, alias), code in _ALIASES.items():
        if country == cc:
            found[alias] = code
    return found


def _from_record(record: object, cc: str) -> str | None:
    if not isinstance(record, dict):
        return None
    country = record.get("country")
    iso = country.get("iso_code") if isinstance(country, dict) else record.get("country_code")
    if not isinstance(iso, str) or iso.upper() != cc:
        return None  # placed elsewhere than the network: no region rather than a wrong one
    subdivisions = record.get("subdivisions")
    first = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
    if isinstance(first, dict):
        code = region_of(cc, f"{cc}-{first.get('iso_code')}") if first.get("iso_code") else None
        if code is not None:
            return code
        names = first.get("names")
        english = names.get("en") if isinstance(names, dict) else None
        if isinstance(english, str):
            return _by_name(cc, english)
    state = record.get("state1")  # ip-location-db's flat layout of DB-IP's data
    return _by_name(cc, state) if isinstance(state, str) else None


def _by_name(cc: str, english: str) -> str | None:
    """The subdivision of *cc* an English name means: as written, without its suffix,
    or (China's provinces are one word in every romanization) its first word."""
    names, name = _names(cc), _folded(english)
    candidates = [name] + [name[: -len(s) - 1] for s in _SUFFIXES if name.endswith(" " + s)]
    if cc == "CN" and name:
        candidates.append(name.split()[0])
    return next((names[c] for c in candidates if c in names), None)


class CityRegions:
    """Subdivisions from an operator-provided city-level ``.mmdb`` file."""

    def __init__(self, path: Path) -> None:
        self._file = MmdbFile(path)

    def region(self, ip: str, cc: str) -> str | None:
        """The region of *ip* in country *cc*, or None (unknown, elsewhere, no address)."""
        addr = locatable(ip)
        return _from_record(self._file.get(addr), cc) if addr is not None else None

    def close(self) -> None:
        self._file.reader.close()


def with_region(
    network: Network,
    city: CityRegions | None,
    client_ip: str | None,
    via_proxy: bool,
    declared: str | None,
) -> Network:
    """*network* with its region: from the city database when the network was located
    from *client_ip* (never a proxy's exit), else the declared one of its country."""
    located = network.source is NetworkSource.GEOLOCATED and not via_proxy
    if city is not None and located and client_ip:
        found = city.region(client_ip, network.cc)
        if found is not None:
            return replace(network, region=found, region_source=RegionSource.GEOLOCATED)
    claimed = region_of(network.cc, declared)
    if claimed is not None:
        return replace(network, region=claimed, region_source=RegionSource.DECLARED)
    return network


def open_city_regions(path: Path | None) -> CityRegions | None:
    """The operator's city database, or None when none is configured; a bad path fails
    here, at start-up (GeoDatabaseError)."""
    return CityRegions(path) if path is not None else None


__all__ = [
    "REGION_RE",
    "CityRegions",
    "GeoDatabaseError",
    "RegionSource",
    "open_city_regions",
    "region_code",
    "region_of",
    "with_region",
]
