"""collector.services.geo: offline geolocation and the rule that picks a probe's network.

The bundled table is checked on well-known addresses and against geoip2fast's
own reader; the table reader's edge cases on a tiny table written here; the
MaxMind path on .mmdb files written here with mmdb-writer. Nothing leaves the
machine: every lookup reads a local file.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import os
import pickle
import random
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from collector.services import geo
from collector.services.geo import (
    UNKNOWN_NETWORK,
    BundledGeolocator,
    GeoDatabaseError,
    MaxMindGeolocator,
    Network,
    NetworkSource,
    make_geolocator,
    resolve_network,
)

# Addresses that no database may place, whatever it holds (see _NOT_GLOBAL_RECORDS).
NOT_LOCATABLE = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "100.64.0.1",  # CGNAT shared space
    "169.254.1.1",
    "0.0.0.0",
    "255.255.255.255",
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "240.0.0.1",
    "224.0.0.251",
    "::",
    "::1",
    "fe80::1",
    "fe80::1%eth0",
    "fd12:3456::1",
    "2001:db8::1",
    "::ffff:10.1.2.3",
    "::8.8.8.8",  # IPv4-compatible (deprecated): .mmdb files alias it to 8.8.8.8
    "testclient",  # what Starlette's TestClient reports as the peer
    "",
    "not an address",
]


# --- the bundled table ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled() -> BundledGeolocator:
    geolocator = make_geolocator()
    assert isinstance(geolocator, BundledGeolocator)
    return geolocator


@pytest.mark.parametrize(
    ("ip", "cc"),
    [
        ("8.8.8.8", "US"),  # Google Public DNS
        ("202.96.134.133", "CN"),  # China Telecom (Chinanet) resolver, Shenzhen
        ("114.114.114.114", "CN"),
        ("::ffff:202.96.134.133", "CN"),  # as a dual-stack listener reports it
        ("2001:4860:4860::8888", "US"),
        ("240e::1", "CN"),  # China Telecom's IPv6 block
    ],
)
def test_bundled_locates_well_known_addresses(bundled: BundledGeolocator, ip: str, cc: str) -> None:
    # The bundled data has no AS numbers: the ASN is always 0.
    assert bundled.lookup(ip) == (cc, 0)


@pytest.mark.parametrize("ip", NOT_LOCATABLE)
def test_bundled_does_not_locate_private_or_invalid(bundled: BundledGeolocator, ip: str) -> None:
    assert bundled.lookup(ip) is None


def test_bundled_is_read_once_and_shared(bundled: BundledGeolocator) -> None:
    assert make_geolocator() is bundled
    bundled.lookup("8.8.8.8")
    make_geolocator().lookup("202.96.134.133")
    assert bundled.loads == 1


def test_bundled_agrees_with_geoip2fast_itself(
    bundled: BundledGeolocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # collector.services.geo reads geoip2fast's file itself; its reading must match the
    # package's. Importing geoip2fast sets PYTHONWARNINGS=ignore in os.environ
    # (inherited by every later subprocess): let it write to a copy.
    monkeypatch.setattr(os, "environ", os.environ.copy())
    import geoip2fast

    reference = geoip2fast.GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz")
    rng = random.Random(20261121)
    sample: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(3000)
    ]
    for prefix in (0x240, 0x2A0, 0x260, 0x280):  # APNIC, RIPE, ARIN, LACNIC space
        sample += [
            ipaddress.IPv6Address((prefix << 116) | rng.getrandbits(116)) for _ in range(300)
        ]
    compared = located = 0
    for addr in sample:
        if not addr.is_global or addr.is_multicast:
            continue
        expected: Any = reference.lookup(str(addr)).country_code
        if not (len(expected) == 2 and expected.isalpha() and expected != "EU"):
            expected = None  # "--" (reserved, not found), "EU", "ASIA"
        assert bundled.lookup(str(addr)) == (None if expected is None else (expected, 0)), addr
        compared += 1
        located += expected is not None
    assert compared > 2500
    assert located > 2000


# --- the table reader, on a tiny table --------------------------------------------------

_NAMES = [f"{i:02d}:Reserved" for i in range(16)]
_NAMES[3] = "LO:Localhost"  # ids 0..15 are reserved whatever they are called
_NAMES += [
    "99:<not found in database>",  # 16
    "AU:Australia",  # 17
    "CN:China",  # 18
    "US:United States",  # 19
    "EU:Europe",  # 20
    "ASIA:Asia",  # 21
    "DE:Germany",  # 22
]
_TINY = [  # (network, id into _NAMES), sorted
    ("1.0.0.0/24", 17),
    ("1.0.1.0/24", 18),
    ("8.8.8.0/24", 19),
    ("9.9.9.0/24", 3),  # a reserved id on a global address
    ("9.9.10.0/24", 16),
    ("9.9.11.0/24", 20),
    ("9.9.12.0/24", 21),
    ("9.9.13.0/24", 17),  # the last IPv4 network: a country
    ("2a00:1450::/32", 22),
    ("2a00:1451::/32", 18),
]


def _write_table(
    path: Path, entries: list[tuple[str, int]] = _TINY, *, version: int = 120, asn: bool = False
) -> Path:
    nets = [(ipaddress.ip_network(cidr), i) for cidr, i in entries]
    chunks = [nets[k : k + 2] for k in range(0, len(nets), 2)]  # several chunks, as the real one
    tables = [
        [int(chunk[0][0].network_address) for chunk in chunks],
        _NAMES,
        [[int(net.network_address) for net, _ in chunk] for chunk in chunks],
        [[i for _, i in chunk] for chunk in chunks],
        [[net.prefixlen for net, _ in chunk] for chunk in chunks],
    ]
    info = {"info": "test", "country": True, "city": False, "asn": asn, "ipv6": True}
    with gzip.open(path, "wb") as fh:
        pickle.dump((version, info, len(nets), tables), fh)
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> BundledGeolocator:
    return BundledGeolocator(_write_table(tmp_path / "tiny.dat.gz"))


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("1.0.0.1", ("AU", 0)),
        ("1.0.0.255", ("AU", 0)),
        ("1.0.1.0", ("CN", 0)),
        ("8.8.8.8", ("US", 0)),
        ("8.8.9.1", None),  # in the gap after 8.8.8.0/24
        ("1.0.2.1", None),  # in the gap after 1.0.1.0/24
        ("0.255.255.255", None),  # below the first network (and not global anyway)
        ("9.9.9.9", None),  # a reserved id
        ("9.9.10.1", None),  # "99": not found
        ("9.9.11.1", None),  # "EU" is not a country
        ("9.9.12.1", None),  # "ASIA" neither
        ("9.9.13.1", ("AU", 0)),
        ("2a00:1450:4001::1", ("DE", 0)),
        ("2a00:1451::1", ("CN", 0)),
        ("2a00:1452::1", None),  # past the last network
        ("2400::1", None),  # below the first IPv6 network: lands on the last IPv4 one
    ],
)
def test_table_lookup(tiny: BundledGeolocator, ip: str, expected: tuple[str, int] | None) -> None:
    assert tiny.lookup(ip) == expected


def test_table_is_read_lazily_and_once(tiny: BundledGeolocator) -> None:
    assert tiny.loads == 0
    assert tiny.lookup("8.8.8.8") == ("US", 0)
    assert tiny.lookup("1.0.0.1") == ("AU", 0)
    assert tiny.loads == 1


def test_concurrent_first_lookups_read_once(
    tiny: BundledGeolocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = geo._read_table

    def slow_read(path: Path) -> Any:
        time.sleep(0.05)  # widen the window in which every thread finds no table
        return read(path)

    monkeypatch.setattr(geo, "_read_table", slow_read)
    results: list[tuple[str, int] | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(tiny.lookup("8.8.8.8"))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [("US", 0)] * 8
    assert tiny.loads == 1


def test_table_refuses_a_pickle_that_names_a_class(tmp_path: Path) -> None:
    path = tmp_path / "evil.dat.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump((120, OrderedDict(), 0, []), fh)
    with pytest.raises(GeoDatabaseError, match="names a class"):
        BundledGeolocator(path).lookup("8.8.8.8")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: _write_table(p, version=121), "version"),
        (lambda p: _write_table(p, asn=True), "country-only"),
        (lambda p: _write_table(p, []), "layout"),
        (lambda p: p.write_bytes(b"not gzip") and p, "cannot read"),
        (lambda p: p, "cannot read"),  # missing
    ],
)
def test_table_errors(tmp_path: Path, make: Any, match: str) -> None:
    geolocator = BundledGeolocator(make(tmp_path / "table.dat.gz"))
    with pytest.raises(GeoDatabaseError, match=match):
        geolocator.load()


# --- MaxMind-format files -----------------------------------------------------------------


def _mmdb(path: Path, records: dict[str, dict[str, Any]], *, ipv4_only: bool = False) -> Path:
    writer = MMDBWriter(ip_version=4 if ipv4_only else 6, ipv4_compatible=not ipv4_only)
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


# Private and documentation networks in the database: the filter, not the data, refuses them.
_NOT_GLOBAL_RECORDS = {
    cidr: {"country": {"iso_code": "US"}, "country_code": "US", "autonomous_system_number": 64500}
    for cidr in (
        "10.0.0.0/8",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "fd00::/8",
    )
}


@pytest.fixture
def country_db(tmp_path: Path) -> Path:  # GeoLite2-Country's shape
    return _mmdb(
        tmp_path / "country.mmdb",
        {
            "202.96.128.0/18": {"country": {"iso_code": "CN", "names": {"en": "China"}}},
            "8.8.8.0/24": {"country": {"iso_code": "US"}, "registered_country": {"iso_code": "US"}},
            "2001:4860::/32": {"country": {"iso_code": "US"}},
            "1.1.1.0/24": {"registered_country": {"iso_code": "AU"}},  # no located country
            "5.5.5.0/24": {"country": {"iso_code": "EU"}},  # continent level only
            "6.6.6.0/24": {"country": {"iso_code": "de"}},
            **_NOT_GLOBAL_RECORDS,
        },
    )


@pytest.fixture
def asn_db(tmp_path: Path) -> Path:  # GeoLite2-ASN's shape, IPv4 only
    return _mmdb(
        tmp_path / "asn.mmdb",
        {
            "202.96.128.0/18": {
                "autonomous_system_number": 4134,
                "autonomous_system_organization": "Chinanet",
            },
            "8.8.8.0/24": {"autonomous_system_number": 15169},
        },
        ipv4_only=True,
    )


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("202.96.134.133", ("CN", 4134)),
        ("::ffff:202.96.134.133", ("CN", 4134)),
        ("8.8.8.8", ("US", 15169)),
        ("2001:4860:4860::8888", ("US", 0)),  # the ASN file is IPv4 only: no error, no ASN
        ("6.6.6.6", ("DE", 0)),
        ("9.9.9.9", None),  # in neither file
        ("1.1.1.1", None),  # registered there, not located there
        ("5.5.5.5", None),
        *[(ip, None) for ip in NOT_LOCATABLE],
    ],
)
def test_maxmind_country_and_asn_files(
    country_db: Path, asn_db: Path, ip: str, expected: tuple[str, int] | None
) -> None:
    with MaxMindGeolocator(country_db, asn_db) as geolocator:
        assert geolocator.lookup(ip) == expected


@pytest.mark.parametrize(
    "record",
    [
        {"country_code": "CN", "asn": "AS4134", "as_name": "Chinanet"},  # ipinfo_lite.mmdb
        {"country": "CN", "asn": "AS4134"},  # IPinfo's country_asn.mmdb
        {"country": {"iso_code": "CN"}, "autonomous_system_number": 4134},  # DB-IP combined
    ],
)
@pytest.mark.parametrize(("as_country", "as_asn"), [(True, False), (False, True), (True, True)])
def test_maxmind_combined_file(
    tmp_path: Path, record: dict[str, Any], as_country: bool, as_asn: bool
) -> None:
    path = _mmdb(tmp_path / "combined.mmdb", {"202.96.128.0/18": record})
    with MaxMindGeolocator(path if as_country else None, path if as_asn else None) as geolocator:
        assert geolocator.lookup("202.96.134.133") == ("CN", 4134)
        assert geolocator.lookup("8.8.8.8") is None


def test_make_geolocator_with_an_asn_file_only_takes_countries_from_the_bundled_table(
    asn_db: Path,
) -> None:
    geolocator = make_geolocator(asn_db=asn_db)
    assert isinstance(geolocator, MaxMindGeolocator)
    try:
        assert geolocator.lookup("202.96.134.133") == ("CN", 4134)
        assert geolocator.lookup("2001:4860:4860::8888") == ("US", 0)
        assert geolocator.lookup("10.1.2.3") is None
    finally:
        geolocator.close()


def test_make_geolocator_prefers_the_files_country(tmp_path: Path) -> None:
    # The file says CN where the bundled table says US: the operator's file wins.
    path = _mmdb(tmp_path / "c.mmdb", {"8.8.8.0/24": {"country": "CN", "asn": "AS64501"}})
    geolocator = make_geolocator(asn_db=path)
    assert isinstance(geolocator, MaxMindGeolocator)
    try:
        assert geolocator.lookup("8.8.8.8") == ("CN", 64501)
    finally:
        geolocator.close()


def test_maxmind_open_errors(tmp_path: Path, country_db: Path) -> None:
    with pytest.raises(ValueError, match="needs"):
        MaxMindGeolocator(None, None)
    with pytest.raises(GeoDatabaseError, match="cannot open"):
        MaxMindGeolocator(tmp_path / "missing.mmdb", None)
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(GeoDatabaseError, match="cannot open"):
        MaxMindGeolocator(country_db, junk)


def test_maxmind_errors_never_name_the_address(country_db: Path) -> None:
    geolocator = MaxMindGeolocator(country_db, None)
    geolocator.close()
    with pytest.raises(GeoDatabaseError) as caught:
        geolocator.lookup("202.96.134.133")
    assert "202.96" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# --- resolve_network ----------------------------------------------------------------------


class FakeGeolocator:
    """Knows what it is told, private addresses included, and records what it was asked."""

    def __init__(self, known: dict[str, tuple[str, int]]) -> None:
        self.known = known
        self.asked: list[str] = []

    def lookup(self, ip: str) -> tuple[str, int] | None:
        self.asked.append(ip)
        return self.known.get(ip)


CT_IP = "202.96.134.133"
FAKE = {CT_IP: ("CN", 4134), "10.1.2.3": ("US", 64500), "8.8.8.8": ("US", 0)}


def test_geolocated_beats_declared() -> None:
    fake = FakeGeolocator(FAKE)
    network = resolve_network(fake, CT_IP, ("US", 15169), via_proxy=False)
    assert network == Network("CN", 4134, NetworkSource.GEOLOCATED)
    assert network.source == "geolocated"


def test_a_proxied_address_is_never_looked_up() -> None:
    fake = FakeGeolocator(FAKE)
    network = resolve_network(fake, CT_IP, ("cn", 4837), via_proxy=True)
    assert network == Network("CN", 4837, NetworkSource.DECLARED)
    assert fake.asked == []


@pytest.mark.parametrize("ip", [*NOT_LOCATABLE, None])
def test_a_private_or_missing_address_uses_declared(ip: str | None) -> None:
    fake = FakeGeolocator({ip: ("US", 64500) for ip in NOT_LOCATABLE})  # it is never asked
    assert resolve_network(fake, ip, ("CN", 4134), via_proxy=False) == Network(
        "CN", 4134, NetworkSource.DECLARED
    )
    assert fake.asked == []


def test_an_address_unknown_to_the_database_uses_declared() -> None:
    fake = FakeGeolocator(FAKE)
    network = resolve_network(fake, "9.9.9.9", ("CN", 4134), via_proxy=False)
    assert network == Network("CN", 4134, NetworkSource.DECLARED)
    assert fake.asked == ["9.9.9.9"]


def test_a_mapped_address_is_looked_up_as_ipv4() -> None:
    fake = FakeGeolocator(FAKE)
    assert resolve_network(fake, f"::ffff:{CT_IP}", None, via_proxy=False).cc == "CN"
    assert fake.asked == [CT_IP]


def test_nothing_known_is_unknown() -> None:
    fake = FakeGeolocator(FAKE)
    assert resolve_network(fake, "9.9.9.9", None, via_proxy=False) == UNKNOWN_NETWORK
    assert resolve_network(fake, None, None, via_proxy=True) == UNKNOWN_NETWORK
    assert Network("ZZ", 0, NetworkSource.UNKNOWN) == UNKNOWN_NETWORK
    assert UNKNOWN_NETWORK.source == "unknown"


@pytest.mark.parametrize(
    "declared",
    [
        ("CHN", 4134),
        ("C", 4134),
        ("", 4134),
        ("C1", 4134),
        ("中国", 4134),
        ("ÇN", 4134),
        ("ZZ", 4134),
        ("EU", 4134),
        ("CN", 0),
        ("CN", -1),
        ("CN", 2**32),
        ("CN", True),
        ("CN", "4134"),
    ],
)
def test_an_invalid_declaration_is_ignored(declared: Any) -> None:
    fake = FakeGeolocator(FAKE)
    assert resolve_network(fake, "10.1.2.3", declared, via_proxy=False) == UNKNOWN_NETWORK


def test_the_largest_asn_is_accepted() -> None:
    fake = FakeGeolocator(FAKE)
    assert resolve_network(fake, None, ("cn", 2**32 - 1), via_proxy=False) == Network(
        "CN", 2**32 - 1, NetworkSource.DECLARED
    )


def test_a_geolocator_answer_that_is_not_a_country_falls_back_to_declared() -> None:
    fake = FakeGeolocator({"8.8.8.8": ("USA", 15169)})
    assert resolve_network(fake, "8.8.8.8", ("US", 15169), via_proxy=False) == Network(
        "US", 15169, NetworkSource.DECLARED
    )


def test_a_geolocated_country_without_asn_keeps_asn_zero() -> None:
    # The bundled table has no AS numbers; a declared ASN is not mixed into a
    # geolocated network: the source says where every field came from.
    fake = FakeGeolocator(FAKE)
    assert resolve_network(fake, "8.8.8.8", ("US", 15169), via_proxy=False) == Network(
        "US", 0, NetworkSource.GEOLOCATED
    )


def test_nothing_is_logged(
    bundled: BundledGeolocator, country_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with MaxMindGeolocator(country_db, None) as maxmind:
        for geolocator in (bundled, maxmind):
            resolve_network(geolocator, CT_IP, ("CN", 4134), via_proxy=False)
            resolve_network(geolocator, "10.1.2.3", None, via_proxy=False)
    assert caplog.records == []
