"""Offline geolocation: the address a probe talks from -> (country, ASN), then forgotten.

Where this sits in the data flow: the check-in and measurement routes pass the
peer address of the request (with the probe's declared network and its
``via_proxy`` flag) to ``resolve_network``; the returned ``Network`` is what the
collector stores and what verdicts and block events are keyed by. The address
itself goes no further: nothing here logs it, keeps it or puts it in an
exception message, and no lookup is cached by address. Lookups read local files
only; nothing here touches the network.

Two kinds of database:
- ``BundledGeolocator``: the country table that the ``geoip2fast`` package ships
  (MaxMind GeoLite2 data, IPv4 and IPv6). It has no AS numbers (see the class).
- ``MaxMindGeolocator``: MaxMind-format ``.mmdb`` files that the operator
  provides (GeoLite2-Country/-ASN, or a combined DB-IP or IPinfo file).
"""

from __future__ import annotations

import bisect
import gzip
import importlib.util
import ipaddress
import pickle
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, Self

import maxminddb

if TYPE_CHECKING:
    from maxminddb.types import Record

__all__ = [
    "UNKNOWN_NETWORK",
    "BundledGeolocator",
    "GeoDatabaseError",
    "Geolocator",
    "MaxMindGeolocator",
    "Network",
    "NetworkSource",
    "make_geolocator",
    "resolve_network",
]

_ASN_LIMIT: Final = 2**32
_V4_MAX: Final = 2**32 - 1
# Two letters that are not a country: MaxMind's continent-level "EU" and "AP"
# (a network known only to be somewhere in Europe cannot say which government
# blocks it), "XX" as some databases write "unknown", and our own "ZZ".
_NOT_COUNTRIES: Final = frozenset({"AP", "EU", "XX", "ZZ"})


class GeoDatabaseError(Exception):
    """A geolocation database is missing, unreadable, corrupt or closed: a deployment fault.

    Never raised because of an address: an address the database does not know is
    simply not located. Messages never contain the address looked up, but may
    name the database's path; so this is not a ``CollectorError``, whose message
    goes to the client: the app's catch-all answers a bare 500 ``err_internal``.
    """


class NetworkSource(StrEnum):
    GEOLOCATED = "geolocated"  # from the request's address and an offline database
    DECLARED = "declared"  # what the probe says (--cc/--asn): used only when we cannot locate it
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Network:
    """The network a probe measures from: ISO 3166 alpha-2 country and AS number, and
    the region (ISO 3166-2 subdivision) when known (collector.services.regions).

    ``asn`` 0 means the AS is not known (e.g. the bundled database has no AS numbers).
    """

    cc: str
    asn: int
    source: NetworkSource
    region: str | None = None
    region_source: str | None = None  # collector.services.regions.RegionSource


UNKNOWN_NETWORK: Final = Network("ZZ", 0, NetworkSource.UNKNOWN)


class Geolocator(Protocol):
    def lookup(self, ip: str) -> tuple[str, int] | None:
        """Return (upper-case country code, ASN or 0), or None.

        None when the address is invalid, not globally routable (private,
        loopback, link-local, reserved, shared CGNAT space...) or unknown to the
        database.
        """
        ...


def locatable(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to look up, or None when no database could place it."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:  # e.g. Starlette's TestClient reports its peer as "testclient"
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            # A dual-stack listener (uvicorn --host ::) sees IPv4 clients as
            # ::ffff:a.b.c.d; the client's network is that of a.b.c.d.
            addr = addr.ipv4_mapped
        elif int(addr) <= _V4_MAX or addr.scope_id is not None:
            # ::/96 ("IPv4-compatible", deprecated by RFC 4291 2.5.5.1), which
            # Python 3.11 calls global and .mmdb files alias to IPv4; a zone
            # index belongs to link-local addresses only.
            return None
    # is_multicast: Python 3.11 calls 224.0.0.0/4 global, yet no client sends from it.
    if not addr.is_global or addr.is_multicast:
        return None
    return addr


def _country_code(value: object) -> str | None:
    """Two ASCII letters, upper-cased, that name a country; anything else None."""
    if not isinstance(value, str) or len(value) != 2 or not (value.isascii() and value.isalpha()):
        return None
    code = value.upper()
    return None if code in _NOT_COUNTRIES else code


def _asn_number(value: object) -> int:
    """An AS number from an int or a string like "AS4134" (IPinfo's style); 0 if not one."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, str):
        digits = value.strip()
        if digits[:2].upper() == "AS":
            digits = digits[2:]
        if not (digits.isascii() and digits.isdigit()):
            return 0
        value = int(digits)
    if isinstance(value, int) and 0 < value < _ASN_LIMIT:
        return value
    return 0


# --- the bundled database ------------------------------------------------------------

# geoip2fast-ipv6.dat.gz and geoip2fast-asn-ipv6.dat.gz hold the very same
# country table; the "asn" one only adds AS organisation *names*, which cannot
# key a network, so the smaller file is read (about 0.1 s and 50 MiB, not 0.25 s).
_BUNDLED_FILE: Final = "geoip2fast-ipv6.dat.gz"
_DAT_VERSION: Final = 120
_RESERVED_IDS: Final = 16  # geoip2fast's ids 0..15 name private and IANA-reserved blocks


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: a tampered file cannot run code."""

    def find_class(self, module: str, name: str, /) -> type:
        msg = f"the data file names a class ({module}.{name}); only plain data is accepted"
        raise pickle.UnpicklingError(msg)


@dataclass(frozen=True, slots=True)
class _CountryTable:
    """geoip2fast's layout: sorted network starts split in chunks, each with an index entry."""

    chunk_starts: list[int]
    starts: list[list[int]]
    prefixes: list[list[int]]
    ids: list[list[int]]
    codes: tuple[str | None, ...]  # per id: the country, or None (reserved, "not found")

    def find(self, n: int) -> str | None:
        chunk = bisect.bisect_right(self.chunk_starts, n) - 1
        if chunk < 0:
            return None
        starts = self.starts[chunk]
        i = bisect.bisect_right(starts, n) - 1
        if i < 0:
            return None
        start = starts[i]
        bits = 32 if start <= _V4_MAX else 128  # the entry's family sets its size
        if n - start >= 1 << (bits - self.prefixes[chunk][i]):
            return None  # in a gap between two networks
        return self.codes[self.ids[chunk][i]]


def _bundled_data_file() -> Path:
    # find_spec locates the package without importing it: importing geoip2fast
    # sets PYTHONWARNINGS=ignore in os.environ for every child process, keeps its
    # tables in module globals shared by all instances, and runs `ps` on load.
    spec = importlib.util.find_spec("geoip2fast")
    if spec is None or spec.origin is None:
        msg = "the geoip2fast package is not installed (pip install 'blockwatch[collector]')"
        raise GeoDatabaseError(msg)
    return Path(spec.origin).with_name(_BUNDLED_FILE)


def _is_int_rows(rows: object, count: int) -> bool:
    return (
        isinstance(rows, list)
        and len(rows) == count
        and all(isinstance(row, list) and row and isinstance(row[0], int) for row in rows)
    )


def _read_table(path: Path) -> _CountryTable:
    try:
        with gzip.open(path, "rb") as fh:
            loaded: object = _DataOnlyUnpickler(fh).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        msg = f"cannot read the country table {path}: {err}"
        raise GeoDatabaseError(msg) from err
    if not (isinstance(loaded, tuple | list) and len(loaded) == 4):
        msg = f"{path} is not a geoip2fast data file"
        raise GeoDatabaseError(msg)
    version, info, _total, tables = loaded
    if version != _DAT_VERSION or not isinstance(info, dict):
        msg = f"{path}: unsupported geoip2fast data version {version!r}"
        raise GeoDatabaseError(msg)
    if not (info.get("country") is True and info.get("asn") is False):
        msg = f"{path} is not a country-only geoip2fast table ({info.get('info')!r})"
        raise GeoDatabaseError(msg)
    if not (isinstance(tables, list | tuple) and len(tables) == 5):
        msg = f"{path}: unexpected geoip2fast table layout"
        raise GeoDatabaseError(msg)
    chunk_starts, names, starts, ids, prefixes = tables
    count = len(chunk_starts) if isinstance(chunk_starts, list) else -1
    if not (
        count > 0
        and all(_is_int_rows(rows, count) for rows in (starts, ids, prefixes))
        and isinstance(names, list)
        and all(isinstance(name, str) for name in names)
    ):
        msg = f"{path}: unexpected geoip2fast table layout"
        raise GeoDatabaseError(msg)
    codes = tuple(
        None if i < _RESERVED_IDS else _country_code(name.partition(":")[0])
        for i, name in enumerate(names)
    )
    return _CountryTable(chunk_starts, starts, prefixes, ids, codes)


class BundledGeolocator:
    """Country of an address from the table bundled with ``geoip2fast``; the ASN is always 0.

    The geoip2fast data files carry no AS numbers: its builder
    (``geoip2dat.py``) replaces GeoLite2-ASN's number with the index of the AS
    organisation's name, and names do not map back to numbers ("Chinanet"
    covers several of China Telecom's ASes). Operators who want networks told
    apart by AS give ``make_geolocator`` an ASN ``.mmdb`` file.

    The data is that of the installed geoip2fast release (GeoLite2 of
    2024-06-18 for 1.2.2); ``data_file`` may name a newer ``geoip2fast-ipv6.dat.gz``.
    The table is read on first use (about 0.1 s), once, under a lock; after
    that lookups only read immutable lists, so threads share one instance.
    The file is read by this module, not through ``geoip2fast.GeoIP2Fast``:
    see ``_bundled_data_file`` for why.
    """

    def __init__(self, data_file: Path | None = None) -> None:
        self._data_file = data_file
        self._table: _CountryTable | None = None
        self._lock = threading.Lock()
        self._loads = 0

    @property
    def loads(self) -> int:
        """How many times the data file was read: 0 before the first lookup, 1 after."""
        return self._loads

    def load(self) -> None:
        """Read the table now (e.g. at start-up) rather than on the first lookup."""
        self._loaded()

    def _loaded(self) -> _CountryTable:
        table = self._table
        if table is None:
            with self._lock:
                table = self._table
                if table is None:
                    table = _read_table(self._data_file or _bundled_data_file())
                    self._loads += 1
                    self._table = table
        return table

    def lookup(self, ip: str) -> tuple[str, int] | None:
        addr = locatable(ip)
        if addr is None:
            return None
        cc = self._loaded().find(int(addr))
        return None if cc is None else (cc, 0)

    def close(self) -> None:
        """Nothing to release: the table is plain objects, shared (see ``make_geolocator``)."""


# --- operator-provided MaxMind-format files ---------------------------------------------


def _record_country(record: Record | None) -> str | None:
    if not isinstance(record, dict):
        return None
    country = record.get("country")
    if isinstance(country, dict):  # GeoLite2 / GeoIP2 / DB-IP: {"country": {"iso_code": "CN"}}
        country = country.get("iso_code")
    # IPinfo: "country": "CN" (country_asn.mmdb) or "country_code": "CN" (ipinfo_lite.mmdb).
    # registered_country is not used: where a block is registered is not where
    # the probe sits (a satellite ISP's customers), and then the declared
    # network is the better answer.
    return _country_code(country) or _country_code(record.get("country_code"))


def _record_asn(record: Record | None) -> int:
    if not isinstance(record, dict):
        return 0
    # GeoLite2-ASN / DB-IP: autonomous_system_number 4134; IPinfo: asn "AS4134".
    return _asn_number(record.get("autonomous_system_number")) or _asn_number(record.get("asn"))


class MmdbFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.reader = maxminddb.open_database(path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as err:
            msg = f"cannot open the MaxMind-format database {path}: {err}"
            raise GeoDatabaseError(msg) from err
        self.ipv4_only = self.reader.metadata().ip_version == 4

    def get(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Record | None:
        if addr.version == 6 and self.ipv4_only:
            return None  # the reader would raise, naming the address
        try:
            return self.reader.get(addr)
        except (ValueError, maxminddb.InvalidDatabaseError) as err:
            # Dropped, not chained: the reader's messages name the address.
            msg = f"lookup in {self.path} failed ({type(err).__name__}): corrupt or closed"
            raise GeoDatabaseError(msg) from None


class MaxMindGeolocator:
    """Country and ASN from operator-provided MaxMind-format (``.mmdb``) files.

    ``country_db``: GeoLite2-Country or GeoIP2-Country, or a combined file
    (DB-IP, IPinfo) with the AS number too. ``asn_db``: GeoLite2-ASN or
    DB-IP's ASN file, or a combined one. The same path for both opens it once.
    The country comes from ``country_db``, else from ``asn_db``'s record, else
    from ``country_fallback`` (e.g. the bundled table, so that an ASN-only file
    is enough); the ASN from ``asn_db``, else from ``country_db``'s record, else 0.
    No country, no answer: an ASN alone cannot key a network.

    Files are opened (memory-mapped) here, so a bad path fails at start-up;
    the readers are safe for concurrent reads. Replace a file by renaming a new
    one over it (as geoipupdate does), never by rewriting it in place.
    """

    def __init__(
        self,
        country_db: Path | None,
        asn_db: Path | None,
        *,
        country_fallback: Geolocator | None = None,
    ) -> None:
        if country_db is None and asn_db is None:
            msg = "MaxMindGeolocator needs a country database, an ASN database or both"
            raise ValueError(msg)
        self._fallback = country_fallback
        self._country = MmdbFile(country_db) if country_db is not None else None
        self._asn = self._country if asn_db == country_db else None
        if asn_db is not None and self._asn is None:
            try:
                self._asn = MmdbFile(asn_db)
            except GeoDatabaseError:
                self.close()  # the country file, if it was opened
                raise

    def lookup(self, ip: str) -> tuple[str, int] | None:
        addr = locatable(ip)
        if addr is None:
            return None
        country_record = self._country.get(addr) if self._country is not None else None
        if self._asn is None:
            asn_record = None
        elif self._asn is self._country:
            asn_record = country_record
        else:
            asn_record = self._asn.get(addr)
        cc = _record_country(country_record) or _record_country(asn_record)
        if cc is None and self._fallback is not None:
            found = self._fallback.lookup(str(addr))
            cc = found[0] if found is not None else None
        if cc is None:
            return None
        return cc, _record_asn(asn_record) or _record_asn(country_record)

    def close(self) -> None:
        """Unmap the files. Not part of ``Geolocator``: the bundled table has nothing to close."""
        if self._country is not None:
            self._country.reader.close()
        if self._asn is not None and self._asn is not self._country:
            self._asn.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the rule ---------------------------------------------------------------------------


def _declared_network(declared: tuple[str, int] | None) -> Network | None:
    if declared is None:
        return None
    cc, asn = declared
    code = _country_code(cc)
    if code is None or isinstance(asn, bool) or not isinstance(asn, int):
        return None
    if not 0 < asn < _ASN_LIMIT:
        return None
    return Network(code, asn, NetworkSource.DECLARED)


def resolve_network(
    geo: Geolocator,
    client_ip: str | None,
    declared: tuple[str, int] | None,
    via_proxy: bool,
) -> Network:
    """The network a probe measures from, and how we know it.

    1. ``geolocated``: the request came straight from the probe (not
       ``via_proxy``) from a globally routable address that the database knows.
       A proxy's exit (Tor, a VPN, a SOCKS server abroad: a volunteer in China
       may well need one to reach us) is not the network the probe measures
       through, so a proxied address is never looked up. Private, loopback and
       CGNAT addresses (a lab, a probe on the collector's LAN, a collector
       behind a reverse proxy that hides the peer) cannot be located.
    2. ``declared``: else what the probe declared (``--cc``/``--asn``), if it is
       two ASCII letters naming a country (upper-cased here) and 0 < asn < 2**32.
       The pydantic schema rejects malformed declarations with a 422 first;
       anything that still gets here invalid counts as not declared.
    3. ``unknown``: else ``UNKNOWN_NETWORK``.

    No state, no logging: the only effect is ``geo.lookup`` (a local file read).
    """
    if not via_proxy and client_ip is not None:
        addr = locatable(client_ip)
        found = geo.lookup(str(addr)) if addr is not None else None
        if found is not None:
            cc = _country_code(found[0])
            if cc is not None:
                return Network(cc, _asn_number(found[1]), NetworkSource.GEOLOCATED)
    return _declared_network(declared) or UNKNOWN_NETWORK


_SHARED_BUNDLED: Final = BundledGeolocator()  # reads nothing until its first lookup


def make_geolocator(country_db: Path | None = None, asn_db: Path | None = None) -> Geolocator:
    """The operator's ``.mmdb`` files when given, else the table bundled with geoip2fast.

    Without paths every call returns the same ``BundledGeolocator``, so the
    table is read once per process. With only ``asn_db``, countries come from
    that file when it has them (a combined file), else from the bundled table.
    """
    if country_db is None and asn_db is None:
        return _SHARED_BUNDLED
    fallback = _SHARED_BUNDLED if country_db is None else None
    return MaxMindGeolocator(country_db, asn_db, country_fallback=fallback)
