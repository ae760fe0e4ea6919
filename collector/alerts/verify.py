"""Proof that a subscriber controls a domain, checked from the collector's vantage.

The collector issues a challenge token; the subscriber publishes it in a DNS TXT
record ``_blockwatch.<domain>`` or in a file
``https://<domain>/.well-known/blockwatch.txt``. Both are looked up with the
control's resolvers (the collector's own view of the internet), the file through
``collector.netsafety``'s guarded resolver (no private ranges unless allowlisted,
exactly the checked addresses dialled), with a timeout and a size cap.
"""

from __future__ import annotations

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver

from collector.core.settings import CollectorSettings
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


async def file_has(
    settings: CollectorSettings,
    domain: str,
    token: str,
    allow: tuple[IPNetwork, ...],
    timeout: float,
) -> bool:
    import ssl  # noqa: PLC0415

    resolver = _DnsGuardedResolver(allow, settings, timeout)
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    connector = aiohttp.TCPConnector(resolver=resolver, ssl=context)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as http,
            http.get(file_url(settings, domain), allow_redirects=False) as answer,
        ):
            body = await answer.content.read(MAX_RESPONSE_BYTES)
            return answer.status == 200 and token in body.decode(errors="replace").split()
    except (aiohttp.ClientError, TimeoutError, OSError, UnsafeDestination):
        return False


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
