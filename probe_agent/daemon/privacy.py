"""The volunteer's own address never leaves in a measurement.

Before a measurement is signed, every string in it that holds one of this
machine's globally routable addresses has it replaced with ``[scrubbed]``, as
OONI does with the probe's IP. A probe behind NAT has no such address on its
interfaces (its private one says little); a probe on a public address (a VPS, a
machine with IPv6 global addresses) would otherwise show it in, for example, an
error message or a resolver's answer.

The addresses are found without sending anything: a UDP socket ``connect()``ed
to a documentation address (RFC 5737 / RFC 3849) picks the source address the
route would use (no name is looked up: a lookup could leave the machine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Any

from probe_agent.measure.failures import SCRUBBED

# Destinations for route lookups only: connect() on UDP sends no packet.
_ROUTE_PROBES = (("192.0.2.1", socket.AF_INET), ("2001:db8::1", socket.AF_INET6))


def _routable(text: str) -> bool:
    try:
        addr = ipaddress.ip_address(text.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    return addr.is_global


def own_addresses() -> frozenset[str]:
    """This machine's globally routable source addresses (usually none behind NAT)."""
    found: set[str] = set()
    for destination, family in _ROUTE_PROBES:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((destination, 9))
            found.add(sock.getsockname()[0])
    return frozenset(ip for ip in found if _routable(ip))


def scrub(value: Any, addresses: frozenset[str]) -> Any:
    """A copy of *value* (JSON-like) with every occurrence of *addresses* scrubbed."""
    if not addresses:
        return value
    if isinstance(value, str):
        for address in addresses:
            if address in value:
                value = value.replace(address, SCRUBBED)
        return value
    if isinstance(value, list):
        return [scrub(v, addresses) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, addresses) for k, v in value.items()}
    return value
