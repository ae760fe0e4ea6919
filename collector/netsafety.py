"""The one guard of every outbound request to an address that came from outside.

Where this sits in the data flow: the collector connects to hosts it was given,
not chosen: alert webhooks and Mastodon instances (``collector.alerts.outbox``),
a subscriber's ownership file (``collector.alerts.verify``) and the instance
directories an admin imports (``collector.services.importers``);
``collector.services.subscriptions`` checks a URL once more when it is
subscribed. All of them go through this module, which judges addresses with
``probe_agent.protocol.addresses`` (the classification the probe uses too):
nothing that is not public is connected to, unless an allowlist permits it (the
lab and tests, or an admin's "private addresses allowed" switch).

- ``check_url``: the scheme is allowed and the URL carries no credentials;
- ``check_literal``: aiohttp dials an IP-literal host without asking any
  resolver, so a literal is checked here before the request;
- ``GuardedResolver``: the resolver of every guarded ``aiohttp`` session. It
  resolves a name once, refuses the answer if any address is not public, and
  hands aiohttp exactly the addresses it checked: the address connected to is
  the address checked, with no second lookup a rebinding DNS server could
  answer differently.

Redirects are never followed by aiohttp: a caller that follows them (the
importer) checks every hop's host again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from probe_agent.protocol.addresses import (
    AddressKind,
    IPAddress,
    IPNetwork,
    classify,
    is_routable,
    parse_address,
    parse_networks,
)

MAX_RESPONSE_BYTES = 64 * 1024


class UnsafeDestination(Exception):
    """The URL leads somewhere the collector may not go (private range, bad scheme...).

    For a refused address, ``address`` is the address and ``reason`` why it is not
    public (for messages: "a loopback address").
    """

    def __init__(
        self,
        message: str,
        *,
        address: IPAddress | None = None,
        reason: AddressKind | None = None,
    ) -> None:
        super().__init__(message)
        self.address = address
        self.reason = reason


class Unresolvable(UnsafeDestination):
    """The name resolved to no address at all."""


def parse_allowlist(text: str) -> tuple[IPNetwork, ...]:
    """The networks of a comma-separated allowlist ("127.0.0.0/8,::1/128")."""
    return parse_networks(text)


def is_public(ip: str, allow: Iterable[IPNetwork] = ()) -> bool:
    """True when *ip* may be connected to: public, or inside *allow*."""
    return is_routable(ip, allow)


def check_url(url: str, *, allow_http: bool) -> None:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise UnsafeDestination(f"the URL must be {' or '.join(schemes)}://host/...")
    if parts.username or parts.password:
        raise UnsafeDestination("the URL may not carry credentials")


def check_literal(url: str, allow: Iterable[IPNetwork]) -> None:
    """aiohttp dials an IP-literal host without asking the resolver: check it here."""
    host = urlsplit(url).hostname or ""
    try:
        parse_address(host)
    except ValueError:
        return  # a name: the guarded resolver checks what it resolves to
    if not is_public(host, allow):
        raise UnsafeDestination(f"{host} is a non-public address")


def _key(host: str) -> str:
    # Without the root's dot: "localhost." is not in /etc/hosts and would go to DNS.
    return host.rstrip(".").lower()


class GuardedResolver(AbstractResolver):
    """Resolve once, check every address, hand aiohttp exactly what was checked.

    ``check`` pins a host's checked addresses for the resolver's life: a caller
    that checks before each request (the importer, one resolver a fetch) gets
    errors before any connection and exactly one lookup per host. A host aiohttp
    asks about that was not pinned is checked on the spot and not pinned, so the
    long-lived alert session still follows DNS changes (through aiohttp's cache).
    Either way ``resolve`` never answers with an address it did not check.
    """

    def __init__(self, allow: Iterable[IPNetwork] = ()) -> None:
        self.allow = tuple(allow)
        self._pinned: dict[str, list[IPAddress]] = {}

    async def addresses(self, host: str) -> list[str]:
        """Every address *host* resolves to (the system's resolver; subclasses may ask another)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, 0, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return [str(info[4][0]) for info in infos]

    async def check(self, host: str) -> list[IPAddress]:
        """Resolve *host* once, check every address, pin them and return them in order.

        Raises ``UnsafeDestination`` for a non-public address, ``Unresolvable``
        for no address at all, and whatever ``OSError`` the lookup raised.
        """
        checked = await self._checked(host)
        self._pinned[_key(host)] = checked
        return checked

    def pinned(self, host: str) -> list[IPAddress] | None:
        return self._pinned.get(_key(host))

    async def _checked(self, host: str) -> list[IPAddress]:
        try:
            found = [parse_address(host)]
        except ValueError:
            found = [parse_address(ip) for ip in await self.addresses(_key(host))]
        addresses = list(dict.fromkeys(found))
        if not addresses:
            raise Unresolvable(f"{host} does not resolve")
        for ip in addresses:
            verdict = classify(ip, self.allow)
            if not verdict.routable:
                raise UnsafeDestination(
                    f"{host} resolves to a non-public address", address=ip, reason=verdict.kind
                )
        return addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.pinned(host) or await self._checked(host)
        results = [_result(host, ip, port) for ip in addresses]
        if family in (socket.AF_INET, socket.AF_INET6):
            results = [r for r in results if r["family"] == family]
        if not results:
            raise OSError(f"{host}: no checked address of family {family!r}")
        return results

    async def close(self) -> None:
        return None


def _result(host: str, ip: IPAddress, port: int) -> ResolveResult:
    return ResolveResult(
        hostname=host,
        host=str(ip),
        port=port,
        family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
        proto=socket.IPPROTO_TCP,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )
