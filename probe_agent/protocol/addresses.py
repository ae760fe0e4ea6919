"""One classification of IP addresses, shared by the probe and the collector.

Where this sits in the data flow: the probe classifies the DNS answers it gets
(``measure.engine`` dials only routable ones; ``measure.hints`` reports
``dns_bogon`` and ``dns_forged_ip``), the collector's analysis re-derives the
same from stored measurements (``collector.analysis.evidence``), and the
collector's one outbound guard (``collector.netsafety``) refuses to connect to
anything that is not public. All of them ask ``classify`` here, so the two
sides cannot disagree about what an address is.

``classify`` gives an ``AddressClass`` and, when the address is not public, the
``AddressKind`` that says why (for messages: "a loopback address"):

- ``PUBLIC``: globally routable unicast;
- ``ALLOWED``: not public, but inside the caller's allowlist (the lab networks of
  tests and the demo, which run their "internet" on loopback): treated as public;
- ``PRIVATE``: the address of a host on some local network (loopback, RFC 1918,
  unique-local, link-local, site-local, shared 100.64.0.0/10, local-use NAT64):
  what a server-side request forgery aims at;
- ``SPECIAL``: no host's address anywhere (unspecified, multicast, reserved,
  documentation, benchmarking);
- ``INVALID``: not an IP address.

A *bogon* (``is_bogon``) is an address that is PRIVATE or SPECIAL. Forged answers
(``is_forged``) are not a class: the GFW's pool holds both public addresses and
one reserved (243.185.187.39), which is forged and a bogon at once.

IPv6 addresses that embed IPv4 ones are judged by what they embed: IPv4-mapped
``::ffff:0:0/96``, NAT64 ``64:ff9b::/96`` (RFC 6052) and the local-use
``64:ff9b:1::/48`` (RFC 8215, read in the /96 format), 6to4 ``2002::/16`` (RFC 3056)
and Teredo ``2001::/32`` (RFC 4380: the server's IPv4 in bits 32-63, the client's
in the last 32 bits, inverted; both must be public). The local-use NAT64 prefix
does not reach the internet by itself, so it is never public unless allowed.

The tables follow IANA's special-purpose registries (RFC 6890 and updates), not
the running Python's ``ipaddress`` flags, which change between versions. Against
the former check of the hints (``not is_global`` after IPv4-mapped unwrapping, on
Python 3.11) this changes, for DNS answers: a NAT64 or 6to4 answer embedding a
non-public IPv4 is now a bogon (a Teredo one already was); a Teredo answer
embedding two public addresses is now public; multicast (224.0.0.0/4, ff00::/8),
site-local fec0::/10, 192.0.0.0/24 (but .9 and .10), 64:ff9b:1::/48 and IPv6
outside 2000::/3 that no registry assigns (e.g. IPv4-compatible ``::a.b.c.d``) are
now bogons; the globally reachable exceptions inside 2001::/23 are now public.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, lru_cache
from importlib import resources
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Every address: the allowlist of "private addresses allowed" switches.
ALL_ADDRESSES: tuple[IPNetwork, ...] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))


class AddressClass(StrEnum):
    PUBLIC = "public"
    ALLOWED = "allowed"
    PRIVATE = "private"
    SPECIAL = "special"
    INVALID = "invalid"


class AddressKind(StrEnum):
    """Why an address is not public; the value reads in "a <kind> address"."""

    LOOPBACK = "loopback"
    PRIVATE = "private"
    SHARED = "shared (carrier-grade NAT)"
    LINK_LOCAL = "link-local"
    SITE_LOCAL = "site-local"
    LOCAL_NAT64 = "local-use NAT64"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    DOCUMENTATION = "documentation"
    BENCHMARKING = "benchmarking"
    RESERVED = "reserved"


_PRIVATE_KINDS = frozenset(
    {
        AddressKind.LOOPBACK,
        AddressKind.PRIVATE,
        AddressKind.SHARED,
        AddressKind.LINK_LOCAL,
        AddressKind.SITE_LOCAL,
        AddressKind.LOCAL_NAT64,
    }
)


@dataclass(frozen=True, slots=True)
class Classification:
    address_class: AddressClass
    kind: AddressKind | None = None  # set for PRIVATE and SPECIAL

    @property
    def routable(self) -> bool:
        """True when connecting to the address is reaching the internet (or the lab)."""
        return self.address_class in (AddressClass.PUBLIC, AddressClass.ALLOWED)


PUBLIC = Classification(AddressClass.PUBLIC)
ALLOWED = Classification(AddressClass.ALLOWED)
INVALID = Classification(AddressClass.INVALID)


def _not_public(kind: AddressKind) -> Classification:
    cls = AddressClass.PRIVATE if kind in _PRIVATE_KINDS else AddressClass.SPECIAL
    return Classification(cls, kind)


def _table(*rows: tuple[str, AddressKind]) -> tuple[tuple[IPNetwork, AddressKind], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in rows)


# First match wins: the narrower ranges come before the ranges that hold them.
_V4_SPECIAL = _table(
    ("0.0.0.0/32", AddressKind.UNSPECIFIED),
    ("0.0.0.0/8", AddressKind.RESERVED),  # "this network"
    ("10.0.0.0/8", AddressKind.PRIVATE),
    ("100.64.0.0/10", AddressKind.SHARED),
    ("127.0.0.0/8", AddressKind.LOOPBACK),
    ("169.254.0.0/16", AddressKind.LINK_LOCAL),
    ("172.16.0.0/12", AddressKind.PRIVATE),
    ("192.0.0.0/24", AddressKind.RESERVED),  # IETF protocol assignments
    ("192.0.2.0/24", AddressKind.DOCUMENTATION),
    ("192.168.0.0/16", AddressKind.PRIVATE),
    ("198.18.0.0/15", AddressKind.BENCHMARKING),
    ("198.51.100.0/24", AddressKind.DOCUMENTATION),
    ("203.0.113.0/24", AddressKind.DOCUMENTATION),
    ("224.0.0.0/4", AddressKind.MULTICAST),
    ("240.0.0.0/4", AddressKind.RESERVED),  # with the broadcast 255.255.255.255
)
_V6_SPECIAL = _table(
    ("::/128", AddressKind.UNSPECIFIED),
    ("::1/128", AddressKind.LOOPBACK),
    ("100::/64", AddressKind.RESERVED),  # discard-only
    ("2001:2::/48", AddressKind.BENCHMARKING),
    ("2001::/23", AddressKind.RESERVED),  # IETF protocol assignments
    ("2001:db8::/32", AddressKind.DOCUMENTATION),
    ("3fff::/20", AddressKind.DOCUMENTATION),
    ("5f00::/16", AddressKind.RESERVED),  # SRv6 segment identifiers
    ("fc00::/7", AddressKind.PRIVATE),  # unique-local
    ("fe80::/10", AddressKind.LINK_LOCAL),
    ("fec0::/10", AddressKind.SITE_LOCAL),  # deprecated by RFC 3879, still routed inside sites
    ("ff00::/8", AddressKind.MULTICAST),
)
# Globally reachable assignments inside the ranges above (IANA's registries say so).
_GLOBAL_EXCEPTIONS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.9/32",  # Port Control Protocol anycast
        "192.0.0.10/32",  # TURN anycast
        "2001:1::1/128",
        "2001:1::2/128",
        "2001:3::/32",  # AMT
        "2001:4:112::/48",  # AS112-v6
        "2001:20::/28",  # ORCHIDv2
        "2001:30::/28",  # drone remote ID
    )
)
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


def _last_32_bits(addr: IPv6Address) -> tuple[IPv4Address, ...]:
    return (IPv4Address(int(addr) & 0xFFFFFFFF),)


def _teredo(addr: IPv6Address) -> tuple[IPv4Address, ...]:
    pair = addr.teredo
    return pair if pair is not None else ()


def _sixtofour(addr: IPv6Address) -> tuple[IPv4Address, ...]:
    embedded = addr.sixtofour
    return (embedded,) if embedded is not None else ()


def _mapped(addr: IPv6Address) -> tuple[IPv4Address, ...]:
    embedded = addr.ipv4_mapped
    return (embedded,) if embedded is not None else ()


@dataclass(frozen=True, slots=True)
class Wrapper:
    """An IPv6 prefix whose addresses carry IPv4 ones."""

    name: str
    prefix: IPv6Network
    # True when the prefix itself leads to the internet, so the embedded addresses
    # decide; False for a prefix whose meaning is local to one network.
    routable: bool
    embedded: Callable[[IPv6Address], tuple[IPv4Address, ...]]


WRAPPERS = (
    Wrapper("IPv4-mapped", IPv6Network("::ffff:0:0/96"), True, _mapped),
    Wrapper("NAT64", IPv6Network("64:ff9b::/96"), True, _last_32_bits),
    Wrapper("local-use NAT64", IPv6Network("64:ff9b:1::/48"), False, _last_32_bits),
    Wrapper("Teredo", IPv6Network("2001::/32"), True, _teredo),
    Wrapper("6to4", IPv6Network("2002::/16"), True, _sixtofour),
)


def parse_address(ip: str | IPAddress) -> IPAddress:
    """*ip* as an address object; an IPv6 zone ("fe80::1%eth0") is dropped. Raises ValueError."""
    if not isinstance(ip, str):
        return ip
    if ":" in ip:
        ip = ip.split("%", 1)[0]
    return ipaddress.ip_address(ip)


def is_address(text: str) -> bool:
    """Whether *text* is an IP address (an IPv6 one may be bracketed, as in a URL)."""
    try:
        parse_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of CIDRs (host bits allowed). Raises ValueError."""
    return tuple(
        ipaddress.ip_network(n.strip(), strict=False) for n in text.split(",") if n.strip()
    )


def classify(ip: str | IPAddress, allow: Iterable[IPNetwork] = ()) -> Classification:
    """What *ip* is; addresses inside *allow* (and wrappers around them) are ``ALLOWED``."""
    if isinstance(ip, str):
        return _classify_text(ip, tuple(allow))
    return _classify(ip, tuple(allow))


@lru_cache(maxsize=16384)
def _classify_text(ip: str, allow: tuple[IPNetwork, ...]) -> Classification:
    # Cached: the collector's analysis asks about the same few thousand addresses again
    # and again (every answer of every measurement); the answer never changes.
    try:
        addr = parse_address(ip)
    except ValueError:
        return INVALID
    return _classify(addr, allow)


def _classify(addr: IPAddress, allow: tuple[IPNetwork, ...]) -> Classification:
    if any(addr in net for net in allow):
        return ALLOWED
    if isinstance(addr, IPv6Address):
        wrapper = next((w for w in WRAPPERS if addr in w.prefix), None)
        if wrapper is not None:
            return _unwrapped(addr, wrapper, allow)
    if any(addr in net for net in _GLOBAL_EXCEPTIONS):
        return PUBLIC
    table = _V4_SPECIAL if addr.version == 4 else _V6_SPECIAL
    kind = next((kind for net, kind in table if addr in net), None)
    if kind is None and isinstance(addr, IPv6Address) and addr not in _GLOBAL_UNICAST_V6:
        kind = AddressKind.RESERVED  # outside the only range IANA allocates unicast from
    return PUBLIC if kind is None else _not_public(kind)


def _unwrapped(addr: IPv6Address, wrapper: Wrapper, allow: tuple[IPNetwork, ...]) -> Classification:
    """The first embedded address that is not routable decides, then the prefix itself."""
    inner = [_classify(embedded, allow) for embedded in wrapper.embedded(addr)]
    refused = next((c for c in inner if not c.routable), None)
    if refused is not None:
        return refused
    if not wrapper.routable:
        return _not_public(AddressKind.LOCAL_NAT64)
    return ALLOWED if ALLOWED in inner else PUBLIC


def is_routable(ip: str | IPAddress, allow: Iterable[IPNetwork] = ()) -> bool:
    """True for a public address, or one inside *allow*; False for a non-address."""
    return classify(ip, allow).routable


def is_bogon(ip: str, lab_networks: Iterable[IPNetwork] = ()) -> bool:
    """True for an address that is not routable on the internet (PRIVATE or SPECIAL).

    *lab_networks* are treated as routable: tests and the demo run their
    "internet" on loopback, where every address would otherwise be a bogon. A
    string that is no address is not a bogon (it is not an address at all).
    """
    return classify(ip, lab_networks).address_class in (AddressClass.PRIVATE, AddressClass.SPECIAL)


# -- the forged-answer pools -----------------------------------------------------------------

FORGED_POOL_FILES = (
    "gfw-forged-ips-v4.txt",
    "gfw-forged-ips-v6.txt",
    "ooni-cn-dns-poison-v4.txt",
)
# Bump when the shipped pool files change; the collector records it with each event.
FORGED_POOL_VERSION = "wallbleed-eca232e9+ooni-9"


@cache
def forged_pool() -> frozenset[str]:
    """Every address in the shipped forged-answer pools (gfw-report/ndss25-wallbleed,
    OONI's CN poison list), in canonical form."""
    found: set[str] = set()
    data = resources.files("probe_agent.protocol") / "data"
    for name in FORGED_POOL_FILES:
        for raw in (data / name).read_text(encoding="utf-8").splitlines():
            entry = raw.strip()
            if entry and not entry.startswith("#"):
                found.add(ipaddress.ip_address(entry).compressed)
    return frozenset(found)


def is_forged(ip: str) -> bool:
    """True when *ip* is one of the GFW's (or OONI's listed) forged DNS answers."""
    try:
        return ipaddress.ip_address(ip).compressed in forged_pool()
    except ValueError:
        return False
