"""Outbound requests to user-supplied URLs: no private ranges, no rebinding gap.

``GuardedResolver`` is the aiohttp resolver of every alert and verification
request: it resolves the name once, refuses the answer if any address is
loopback, private, link-local, multicast, reserved or otherwise not global
(unless an allowlist permits it: the lab and tests), and hands aiohttp exactly
the addresses it checked, so the address connected to is the address checked.
Literal IP hosts go through the same check. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_RESPONSE_BYTES = 64 * 1024


class UnsafeDestination(Exception):
    """The URL leads somewhere alerts may not go (private range, bad scheme...)."""


def parse_allowlist(text: str) -> tuple[Network, ...]:
    return tuple(
        ipaddress.ip_network(n.strip(), strict=False) for n in text.split(",") if n.strip()
    )


def is_public(ip: str, allow: Iterable[Network] = ()) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allow):
        return True
    return addr.is_global and not addr.is_multicast


def check_url(url: str, *, allow_http: bool) -> None:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise UnsafeDestination(f"the URL must be {' or '.join(schemes)}://host/...")
    if parts.username or parts.password:
        raise UnsafeDestination("the URL may not carry credentials")


def check_literal(url: str, allow: Iterable[Network]) -> None:
    """aiohttp dials an IP-literal host without asking the resolver: check it here."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: the guarded resolver checks what it resolves to
    if not is_public(host, allow):
        raise UnsafeDestination(f"{host} is a non-public address")


class GuardedResolver(AbstractResolver):
    def __init__(self, allow: tuple[Network, ...] = ()) -> None:
        self.allow = allow

    async def addresses(self, host: str) -> list[str]:
        """Every address *host* resolves to (the system's resolver by default)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            ipaddress.ip_address(host)
            ips = [host]
        except ValueError:
            ips = await self.addresses(host)
        if not ips:
            raise UnsafeDestination(f"{host} does not resolve")
        results: list[ResolveResult] = []
        for ip in dict.fromkeys(ips):
            if not is_public(ip, self.allow):
                raise UnsafeDestination(f"{host} resolves to a non-public address")
            results.append(
                ResolveResult(
                    hostname=host,
                    host=ip,
                    port=port,
                    family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        return results

    async def close(self) -> None:
        return None
