"""Proof that a subscriber controls a domain, checked from the collector's vantage.

The collector issues a challenge token; the subscriber publishes it in a DNS TXT
record ``_blockwatch.<domain>`` or in a file
``https://<domain>/.well-known/blockwatch.txt``. Both are looked up with the
control's resolvers (the collector's own view of the internet), the file through
``collector.netsafety``'s guarded resolver (no private ranges unless allowlisted,
exactly the checked addresses dialled), with a timeout and a size cap.

The same way in, the collector reads the instance's own description
(``/api/v2/instance``) for the language its alerts should be written in.
"""

from __future__ import annotations

import json

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver

from collector.alerts import channels
from collector.core.settings import CollectorSettings, Mode
from collector.netsafety import MAX_RESPONSE_BYTES, GuardedResolver, UnsafeDestination
from probe_agent.protocol.addresses import IPNetwork
from probe_agent.protocol.inputs import parse_endpoint

TXT_PREFIX = "_blockwatch."
FILE_PATH = "/.well-known/blockwatch.txt"


def _resolver(settings: CollectorSettings, timeout: float) -> dns.asyncresolver.Resolver:
    names = [r for r in settings.control_resolvers.split(",") if r.strip()]
    if not names:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        endpoints = [parse_endpoint(r) for r in names]
        resolver.nameservers = [e.ip for e in endpoints]
        resolver.port = endpoints[0].port
    resolver.lifetime = timeout
    return resolver


async def txt_has(settings: CollectorSettings, domain: str, token: str, timeout: float) -> bool:
    try:
        answer = await _resolver(settings, timeout).resolve(TXT_PREFIX + domain, "TXT")
    except (dns.exception.DNSException, OSError):
        return False
    for record in answer:
        text = b"".join(record.strings).decode(errors="replace")
        if token in text.split() or text.strip() == token:
            return True
    return False


def file_url(settings: CollectorSettings, domain: str) -> str:
    port = "" if settings.control_port == 443 else f":{settings.control_port}"
    return f"https://{domain}{port}{FILE_PATH}"


class _DnsGuardedResolver(GuardedResolver):
    """The guarded resolver, resolving with the control's resolvers."""

    def __init__(self, allow: tuple[IPNetwork, ...], settings: CollectorSettings, timeout: float):
        super().__init__(allow)
        self.dns = _resolver(settings, timeout)

    async def addresses(self, host: str) -> list[str]:
        found: list[str] = []
        for qtype in ("A", "AAAA"):
            try:
                found += [r.to_text() for r in await self.dns.resolve(host, qtype)]
            except (dns.exception.DNSException, OSError):
                continue
        return found


def can_look_up(settings: CollectorSettings) -> bool:
    """Whether the collector may look a domain up itself: with named control resolvers,
    or in production (the system's); never in the lab and demo modes, where nothing
    may leave the machine."""
    return bool(settings.control_resolvers.strip()) or settings.mode is Mode.PRODUCTION


async def fetch(
    settings: CollectorSettings, url: str, allow: tuple[IPNetwork, ...], timeout: float
) -> tuple[int, bytes] | None:
    """GET *url* as the control sees it (its resolvers, the guarded dialler, the CA
    file), without redirects, at most MAX_RESPONSE_BYTES; None when it fails."""
    import ssl  # noqa: PLC0415

    resolver = _DnsGuardedResolver(allow, settings, timeout)
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    connector = aiohttp.TCPConnector(resolver=resolver, ssl=context)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as http,
            http.get(url, allow_redirects=False) as answer,
        ):
            return answer.status, await answer.content.read(MAX_RESPONSE_BYTES)
    except (aiohttp.ClientError, TimeoutError, OSError, UnsafeDestination):
        return None


async def file_has(
    settings: CollectorSettings,
    domain: str,
    token: str,
    allow: tuple[IPNetwork, ...],
    timeout: float,
) -> bool:
    got = await fetch(settings, file_url(settings, domain), allow, timeout)
    return got is not None and got[0] == 200 and token in got[1].decode(errors="replace").split()


def instance_url(settings: CollectorSettings, domain: str) -> str:
    port = "" if settings.control_port == 443 else f":{settings.control_port}"
    return f"https://{domain}{port}/api/v2/instance"


async def instance_language(
    settings: CollectorSettings, domain: str, allow: tuple[IPNetwork, ...]
) -> str | None:
    """The language of the instance's people (``languages`` of its /api/v2/instance,
    collector.alerts.channels.instance_language), when the collector may ask and we
    have it; None otherwise (not Mastodon, unreachable, a language we lack)."""
    if not can_look_up(settings):
        return None
    got = await fetch(settings, instance_url(settings, domain), allow, settings.alert_timeout)
    if got is None or got[0] != 200:
        return None
    try:
        answer = json.loads(got[1])
    except ValueError:
        return None
    return channels.instance_language(answer)


async def owns(
    settings: CollectorSettings, domain: str, token: str, allow: tuple[IPNetwork, ...]
) -> str | None:
    """``"txt"`` or ``"file"`` when the domain shows the token; None otherwise."""
    timeout = settings.alert_timeout
    if await txt_has(settings, domain, token, timeout):
        return "txt"
    if await file_has(settings, domain, token, allow, timeout):
        return "file"
    return None
