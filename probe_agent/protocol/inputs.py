"""Input validation: domain names (IDNA), resolver and collector addresses, the declared network.

Invalid input raises an ``InvalidInputError`` with a message a volunteer can act
on; the CLI turns it into exit status 2. Unicode names become their punycode form
(``例子.测试`` -> ``xn--fsqu00a.xn--0zwm56d``) so that what is measured and reported
is exactly what goes on the wire.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

import dns.resolver
import idna

from probe_agent.protocol.errors import InvalidDomainError, InvalidOptionError, InvalidResolverError
from probe_agent.protocol.messages import N_

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_NAME = 253


def _plain_ascii(name: str) -> str | None:
    """The lower-cased name when IDNA would only lower-case it, else None.

    A name of letters, digits and inner hyphens, with no label that is (or looks
    like) an A-label (``xn--``, or any ``--`` in the third and fourth positions,
    which IDNA 2008 reserves), is its own IDNA form. ``idna.encode`` costs about
    125 µs a name, a tenth of a second for a list of 1,000 before the first
    measurement; everything else (Unicode, A-labels, errors and their messages)
    still goes through it.
    """
    if not name.isascii() or len(name) > _MAX_NAME:
        return None  # idna refuses an over-long name itself ("Domain too long")
    lowered = name.lower()
    for label in lowered.split("."):
        if not _LABEL_RE.fullmatch(label) or label[2:4] == "--":
            return None
    return lowered


@functools.lru_cache(maxsize=4096)  # a collector sees the same few hundred targets
def normalize_domain(raw: str) -> str:
    """Return the ASCII (punycode) form of *raw*, lower-cased, or raise InvalidDomainError."""
    name = raw.strip().rstrip(".")
    if not name:
        raise InvalidDomainError(N_("invalid domain %(raw)r: empty name"), raw=raw)
    if "/" in name or ":" in name or " " in name:
        raise InvalidDomainError(
            N_("invalid domain %(raw)r: give a bare host name, not a URL or host:port"), raw=raw
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise InvalidDomainError(
            N_("invalid domain %(raw)r: an IP address, not a domain name"), raw=raw
        )
    ascii_name = _plain_ascii(name)
    if ascii_name is None:
        try:
            # IDNA 2008 with UTS 46 mapping, non-transitional: what browsers and
            # registries use ("straße" stays "xn--strae-oqa", not "strasse").
            ascii_name = idna.encode(name, uts46=True, transitional=False).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError) as exc:
            msg = N_("invalid domain %(raw)r: not a valid IDNA name (%(reason)s)")
            raise InvalidDomainError(msg, raw=raw, reason=str(exc)) from exc
    if len(ascii_name) > _MAX_NAME:
        raise InvalidDomainError(
            N_("invalid domain %(raw)r: longer than %(limit)s characters"), raw=raw, limit=_MAX_NAME
        )
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidDomainError(N_("invalid domain %(raw)r: needs at least two labels"), raw=raw)
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            msg = N_("invalid domain %(raw)r: bad label %(label)r")
            raise InvalidDomainError(msg, raw=raw, label=label)
    if labels[-1].isdigit():
        raise InvalidDomainError(
            N_("invalid domain %(raw)r: the top-level label is numeric"), raw=raw
        )
    return ascii_name


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolver (or injection sink) address: IP and port."""

    ip: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"

    @property
    def family_v6(self) -> bool:
        return ":" in self.ip


def parse_endpoint(raw: str, default_port: int = 53) -> Endpoint:
    """Parse ``IP``, ``IP:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``."""
    text = raw.strip()
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise InvalidResolverError(N_("invalid resolver %(raw)r: missing ']'"), raw=raw)
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidResolverError(
                    N_("invalid resolver %(raw)r: expected ':PORT' after ']'"), raw=raw
                )
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise InvalidResolverError(
            N_("invalid resolver %(raw)r: expected IP[:PORT] or [IPv6]:PORT"), raw=raw
        ) from exc
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidResolverError(
                N_("invalid resolver %(raw)r: port must be 1-65535"), raw=raw
            )
        port = int(port_text)
    return Endpoint(ip.compressed, port)


def is_port(value: object) -> bool:
    """A TCP port number from JSON: an int (not a bool) in 1-65535."""
    return type(value) is int and 0 < value < 65536


def system_resolvers() -> list[Endpoint]:
    """The resolvers of /etc/resolv.conf (per network namespace under ``ip netns exec``)."""
    try:
        conf = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration as exc:
        raise InvalidResolverError(
            N_("no system resolver configured (/etc/resolv.conf); pass --resolver IP[:PORT]")
        ) from exc
    found: list[Endpoint] = []
    for ns in conf.nameservers:
        text = str(ns)
        try:
            found.append(parse_endpoint(text, default_port=conf.port))
        except InvalidResolverError:
            continue  # DoH/DoT URLs in resolv.conf are not ours to measure
    if not found:
        raise InvalidResolverError(N_("no usable system resolver; pass --resolver IP[:PORT]"))
    return found


def parse_network(raw: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse a CIDR such as ``127.0.0.0/8``."""
    try:
        return ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError as exc:
        raise InvalidOptionError(
            N_("invalid network %(raw)r: expected a CIDR like 127.0.0.0/8"), raw=raw
        ) from exc


# AS 0 is reserved (RFC 7607) and AS 4294967295 too (RFC 7300).
MIN_ASN, MAX_ASN = 1, 4_294_967_294
_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")


@dataclass(frozen=True, slots=True)
class DeclaredNetwork:
    """The network a volunteer declares (``--cc``/``--asn``) for when geolocation is impossible."""

    cc: str
    asn: int

    def to_json(self) -> dict[str, str | int]:
        return {"cc": self.cc, "asn": self.asn}


def parse_declared(cc: str | None, asn: int | None) -> DeclaredNetwork | None:
    """``--cc CC --asn N`` go together: an ISO 3166-1 alpha-2 code and a 32-bit ASN."""
    if cc is None and asn is None:
        return None
    if cc is None or asn is None:
        raise InvalidOptionError(N_("--cc and --asn go together: give both, or neither"))
    if not _COUNTRY_RE.match(cc.strip()):
        raise InvalidOptionError(
            N_("invalid country %(cc)r: expected a two-letter ISO 3166-1 code like DE"), cc=cc
        )
    if not MIN_ASN <= asn <= MAX_ASN:
        raise InvalidOptionError(
            N_("invalid ASN %(asn)s: expected %(low)s-%(high)s"), asn=asn, low=MIN_ASN, high=MAX_ASN
        )
    return DeclaredNetwork(cc.strip().upper(), asn)


_REGION_RE = re.compile(r"^[A-Za-z]{2}-[A-Za-z0-9]{1,3}$")


def parse_region(region: str | None, cc: str | None = None) -> str | None:
    """``--region CN-HA``: an ISO 3166-2 subdivision code (upper-cased), of the declared
    country when one is declared. Whether ISO knows the code is the collector's check."""
    if region is None:
        return None
    code = region.strip().upper()
    if not _REGION_RE.match(code):
        raise InvalidOptionError(
            N_("invalid region %(region)r: expected an ISO 3166-2 code like CN-HA"),
            region=region,
        )
    if cc is not None and not code.startswith(cc.strip().upper() + "-"):
        raise InvalidOptionError(
            N_("region %(region)s is not in the declared country %(cc)s"), region=code, cc=cc
        )
    return code


def parse_collector_url(raw: str) -> str:
    """A collector base URL (``https://host[:port][/prefix]``), without a trailing slash."""
    text = raw.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise InvalidOptionError(
            N_("invalid collector URL %(raw)r: %(reason)s"), raw=raw, reason=str(exc)
        ) from exc
    if parts.scheme not in ("https", "http"):
        raise InvalidOptionError(
            N_("invalid collector URL %(raw)r: expected https:// or http://"), raw=raw
        )
    if not parts.hostname:
        raise InvalidOptionError(N_("invalid collector URL %(raw)r: no host"), raw=raw)
    if parts.username is not None or parts.password is not None:
        raise InvalidOptionError(
            N_("invalid collector URL %(raw)r: credentials do not belong in it"), raw=raw
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidOptionError(
            N_("invalid collector URL %(raw)r: a base URL has no query"), raw=raw
        )
    if port == 0:
        raise InvalidOptionError(N_("invalid collector URL %(raw)r: port must be 1-65535"), raw=raw)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``2h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    factor = units.get(value[-1:])
    number = value[:-1] if factor is not None else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise InvalidOptionError(
            N_("invalid duration %(text)r: use e.g. 30s, 5m, 1h"), text=text
        ) from None
    if not 0 < seconds <= 86400:
        raise InvalidOptionError(N_("invalid duration %(text)r: between 0 and 24 h"), text=text)
    return seconds
