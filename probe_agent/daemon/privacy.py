"""The volunteer's own address never leaves in a measurement.

Where this sits in the data flow: between the engine and the signature. The
round builds a ``Scrubber`` from the addresses this probe is known by and runs
every measurement through it before it is signed and spooled; the signed bytes,
the spool and the collector only ever hold the scrubbed copy. Scrubbed text is
replaced by the fixed marker ``[scrubbed]`` (OONI's), so that an analyst still
sees that something was there.

The addresses come from two places:

- this machine's interfaces (``own_addresses``): a probe on a VPS or with IPv6
  global addresses has its public address there. They are found without sending
  anything: a UDP socket ``connect()``ed to a documentation address (RFC 5737 /
  RFC 3849) picks the source address the route would use.
- the address the collector saw (``seen_address`` in the check-in answer,
  ``SeenAddresses``): behind NAT the only way to learn the public address that a
  block page, a redirect's query string or a header echo may carry. Through
  ``--proxy`` it is the proxy's (or the Tor exit's) address, scrubbed as well;
  the volunteer's NAT address is then unknown and cannot be scrubbed.

Only routable addresses count (public, or inside the lab networks, which are
treated as public): a private or loopback address says little about the
volunteer, and scrubbing 127.0.0.0/24 would erase the evidence of a DNS answer
forged to 127.0.0.1.

What is scrubbed, following OONI's ``ScrubMeasurement`` (which replaces the
probe's IP in the serialized measurement) and going further:

- free text (header values such as ``location``, URLs and their query strings,
  certificate names, bodies, dictionary keys): every address inside the /24
  (IPv4) or /64 (IPv6) of one of those addresses, in any spelling: dotted IPv4
  (also zero-padded, reversed as in ``in-addr.arpa`` names, or dashed as in
  ``203-0-113-7.dsl.example.net``), the /24 prefix ``a.b.c.`` followed by a
  number, IPv6 compressed or exploded, bracketed, with ``%3A`` for colons, with
  an embedded IPv4 (``::ffff:a.b.c.d``, 6to4, Teredo, NAT64), and the /64
  prefix followed by anything (``2001:db8:1:2:...``);
- a string that *is* an address or an endpoint (``tcp[].ip``, a DNS answer,
  ``resolver`` as ``ip:port``): only the exact addresses. There the neighbour is
  what the network answered to anyone who asked (a forged DNS answer into the
  probe's /24 is evidence), not an echo of who asked.

Not scrubbed: numbers (an address written as an integer), hashes (a body that
echoes the address has a SHA-256 that someone knowing the page could match
against candidate addresses), and encodings other than those above (base64,
hex, ``ip6.arpa`` nibbles).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

from probe_agent.measure.failures import SCRUBBED
from probe_agent.protocol.addresses import (
    WRAPPERS,
    IPAddress,
    IPNetwork,
    classify,
    parse_address,
)

# Destinations for route lookups only: connect() on UDP sends no packet.
_ROUTE_PROBES = (("192.0.2.1", socket.AF_INET), ("2001:db8::1", socket.AF_INET6))
# How much of a network an address gives away: its /24 (a street, for a home
# connection) or its /64 (one subscriber's IPv6 network).
PREFIX_V4, PREFIX_V6 = 24, 64

# Runs of numbers separated by dots or dashes: "203.0.113.7", "ip-203-0-113-7",
# "7.113.0.203.in-addr.arpa", "version 1.2.3.4.5"; the trailing dot of a prefix
# ("203.0.113.") is captured to recognise the /24 written as a prefix.
_DOTTED = re.compile(r"(?<!\d)\d+(?:\.\d+){2,}(?P<dot>\.)?")
_DASHED = re.compile(r"(?<!\d)\d+(?:-\d+){3,}")
# Hex groups separated by at least two colons (or "%3A", a colon in a URL), with an
# optional dotted IPv4 tail: every spelling of an IPv6 address, and more (a time
# such as "10:30:00" matches too, and is dropped when it does not parse).
# Brackets around it ("[2001:db8::7]:443") go with it.
_COLONS = re.compile(
    r"(?<![0-9A-Za-z])(?P<open>\[)?"
    r"(?P<core>[0-9A-Fa-f]*(?:(?::|%3[Aa])[0-9A-Fa-f]*){2,}(?:\.\d{1,3}){0,3})"
    r"(?(open)\])"
)
_DIGIT = re.compile(r"\d")


def _routable(text: str, allow: Iterable[IPNetwork] = ()) -> bool:
    return classify(text, allow).routable


def own_addresses(allow: Iterable[IPNetwork] = ()) -> frozenset[str]:
    """This machine's routable source addresses (usually none behind NAT)."""
    allowed = tuple(allow)
    found: set[str] = set()
    for destination, family in _ROUTE_PROBES:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((destination, 9))
            found.add(sock.getsockname()[0])
    return frozenset(ip for ip in found if _routable(ip, allowed))


class SeenAddresses:
    """What the collectors saw this probe come from: the last address per family.

    In memory only, for the life of the process: never in ``state.json``, the
    spool or a log line (its ``repr`` names no address). It outlives one round
    so that a round whose check-in failed (the collector blocked) still scrubs
    what it measures; after a restart it is empty until a check-in answers.
    A dual-stack probe may reach one collector URL over IPv4 and another over
    IPv6: both addresses are kept.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[int, IPAddress] = {}

    def remember(self, address: str | None) -> None:
        """Keep *address* (the check-in's ``seen_address``); anything unparsable is ignored."""
        if address is None:
            return
        try:
            parsed = parse_address(address)
        except ValueError:
            return
        self._last[parsed.version] = parsed

    def addresses(self) -> frozenset[IPAddress]:
        return frozenset(self._last.values())

    def __repr__(self) -> str:
        return f"SeenAddresses({len(self._last)} kept)"


def _network(address: IPAddress) -> IPNetwork:
    prefix = PREFIX_V4 if address.version == 4 else PREFIX_V6
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def _embedded(address: IPv6Address) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses an IPv6 one carries (IPv4-mapped, NAT64, Teredo, 6to4)."""
    for wrapper in WRAPPERS:
        if address in wrapper.prefix:
            return wrapper.embedded(address)
    return ()


def _endpoint_address(text: str) -> IPAddress | None:
    """The address of *text* when it is nothing else: ``ip``, ``ip:port``, ``[ip]:port``."""
    host, port = text, ""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if port and not port.isdigit():
        return None
    try:
        return parse_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Scrubber:
    """Scrubs the given addresses from JSON-like values (see the module's docstring)."""

    exact: frozenset[IPAddress]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, addresses: Iterable[str | IPAddress]) -> Scrubber:
        """A scrubber for *addresses* (the caller picks the routable ones)."""
        exact = frozenset(parse_address(a) for a in addresses)
        networks = tuple(dict.fromkeys(_network(a) for a in exact))
        return cls(exact, networks)

    def __bool__(self) -> bool:
        return bool(self.exact)

    def scrub(self, value: Any) -> Any:
        """A copy of *value* (JSON-like) with the addresses scrubbed; *value* is left alone."""
        if not self.exact:
            return value
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        if isinstance(value, dict):
            return {self.scrub_text(k): self.scrub(v) for k, v in value.items()}
        return value

    def scrub_text(self, text: str) -> str:
        if not self.exact or _DIGIT.search(text) is None:
            return text
        endpoint = _endpoint_address(text)
        if endpoint is None:
            return self._replace(text, near=True)
        # A measured address: only the exact ones go.
        wrapped = _embedded(endpoint) if isinstance(endpoint, IPv6Address) else ()
        if endpoint in self.exact or any(inner in self.exact for inner in wrapped):
            return self._replace(text, near=False)
        return text

    # -- matching ---------------------------------------------------------------

    def _hit(self, address: IPAddress, near: bool) -> bool:
        if not near:
            return address in self.exact
        return any(address in net for net in self.networks if net.version == address.version)

    def _replace(self, text: str, *, near: bool) -> str:
        def hit(address: IPAddress) -> bool:
            return self._hit(address, near)

        if ":" in text or "%3" in text:
            text = _COLONS.sub(lambda m: self._colons(m, hit, near), text)
        if "." in text:
            text = _DOTTED.sub(lambda m: self._dotted(m, hit, near), text)
        if "-" in text:
            text = _DASHED.sub(lambda m: SCRUBBED if _runs_hit(m[0], "-", hit) else m[0], text)
        return text

    def _dotted(self, match: re.Match[str], hit: Callable[[IPAddress], bool], near: bool) -> str:
        dot = match["dot"] or ""
        numbers = match[0].removesuffix(dot)
        if _runs_hit(numbers, ".", hit) or (near and dot and self._v4_prefix(numbers)):
            return SCRUBBED + dot
        return match[0]

    def _v4_prefix(self, numbers: str) -> bool:
        """``a.b.c`` (then a dot) is the written /24 of one of the addresses."""
        parts = numbers.split(".")
        if len(parts) != 3 or any(len(p) > 3 for p in parts):
            return False
        prefix = ".".join(str(int(p)) for p in parts) + "."
        return any(
            net.version == 4 and str(net.network_address).startswith(prefix)
            for net in self.networks
        )

    def _colons(self, match: re.Match[str], hit: Callable[[IPAddress], bool], near: bool) -> str:
        text = match["core"].replace("%3A", ":").replace("%3a", ":")
        for candidate in (text, text.removesuffix(":")):
            try:
                address = IPv6Address(candidate)
            except ValueError:
                continue
            if hit(address) or any(hit(inner) for inner in _embedded(address)):
                return SCRUBBED
            return match[0]
        return SCRUBBED if near and self._v6_prefix(text) else match[0]

    def _v6_prefix(self, text: str) -> bool:
        """The first four groups are the /64 of one of the addresses ("2001:db8:1:2:...")."""
        groups = text.split(":")[:4]
        if len(groups) < 4 or not all(0 < len(g) <= 4 for g in groups):
            return False
        try:
            value = sum(int(g, 16) << (16 * (7 - i)) for i, g in enumerate(groups))
        except ValueError:
            return False
        return any(
            isinstance(net, IPv6Network) and int(net.network_address) == value
            for net in self.networks
        )


def _runs_hit(run: str, separator: str, hit: Callable[[IPAddress], bool]) -> bool:
    """Whether four numbers in a row of *run*, read forwards or backwards, are a hit."""
    numbers = [int(n) if len(n) <= 3 else 256 for n in run.split(separator)]
    for i in range(len(numbers) - 3):
        window = numbers[i : i + 4]
        if max(window) > 255:
            continue
        for octets in (window, window[::-1]):
            if hit(IPv4Address(bytes(octets))):
                return True
    return False


def scrubber_for(
    seen: SeenAddresses, allow: Iterable[IPNetwork] = (), own: Iterable[str] | None = None
) -> Scrubber:
    """The scrubber of this round: the interface addresses and what the collectors saw.

    *own* defaults to ``own_addresses(allow)``; only routable addresses are kept.
    """
    allowed = tuple(allow)
    interfaces = own_addresses(allowed) if own is None else own
    candidates = [*interfaces, *seen.addresses()]
    return Scrubber.of(a for a in candidates if _routable(str(a), allowed))


def scrub(value: Any, addresses: Iterable[str | IPAddress]) -> Any:
    """A copy of *value* (JSON-like) with *addresses* (and their neighbourhood) scrubbed."""
    return Scrubber.of(addresses).scrub(value)
