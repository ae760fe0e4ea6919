"""Local hints: evidence of tampering that a probe can see without any control.

A hint is not a verdict (the collector decides, with its control), but these
patterns hold whatever the instance does, so the probe can say them on its own:

- ``dns_forged_ip``: an answer is in the GFW's forged-address pool
  (gfw-report/ndss25-wallbleed) or OONI's older CN poison list;
- ``dns_bogon``: an answer is not a globally routable address (127.0.0.1, 10.x);
- ``dns_duplicate_answers``: one UDP query got two responses that disagree, the
  signature of on-path injection racing the real resolver;
- ``dns_injection``: the injection sink (an address running no resolver) answered;
- ``tls_sni_blocked``: on one address, the decoy-SNI handshake worked and the
  instance-SNI one was reset, timed out or cut (SNI filtering, not IP blocking);
- ``tls_mitm``: the instance-SNI handshake presented a certificate from an
  unknown authority or for another name (interception, or a misconfiguration the
  collector tells apart with its control).

The set is closed (``Hint``) and documented in docs/measurement-format.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from enum import StrEnum
from functools import cache
from importlib import resources

from probe_agent.measure.failures import Failure, Operation
from probe_agent.measure.observations import DNSObservation, TLSObservation


class Hint(StrEnum):
    DNS_FORGED_IP = "dns_forged_ip"
    DNS_BOGON = "dns_bogon"
    DNS_DUPLICATE_ANSWERS = "dns_duplicate_answers"
    DNS_INJECTION = "dns_injection"
    TLS_SNI_BLOCKED = "tls_sni_blocked"
    TLS_MITM = "tls_mitm"


FORGED_POOL_FILES = (
    "gfw-forged-ips-v4.txt",
    "gfw-forged-ips-v6.txt",
    "ooni-cn-dns-poison-v4.txt",
)
# Bump when the shipped pool files change; the collector records it with each event.
FORGED_POOL_VERSION = "wallbleed-eca232e9+ooni-9"

# Failures of the instance-SNI handshake that an SNI filter causes.
SNI_BLOCK_FAILURES = frozenset(
    {Failure.CONNECTION_RESET.value, Failure.GENERIC_TIMEOUT.value, Failure.EOF.value}
)
MITM_FAILURES = frozenset({Failure.SSL_UNKNOWN_AUTHORITY.value, Failure.SSL_INVALID_HOSTNAME.value})


@cache
def forged_pool() -> frozenset[str]:
    """Every address in the shipped forged-answer pools, in canonical form."""
    found: set[str] = set()
    data = resources.files("probe_agent.protocol") / "data"
    for name in FORGED_POOL_FILES:
        for raw in (data / name).read_text(encoding="utf-8").splitlines():
            entry = raw.strip()
            if entry and not entry.startswith("#"):
                found.add(ipaddress.ip_address(entry).compressed)
    return frozenset(found)


def is_forged(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).compressed in forged_pool()
    except ValueError:
        return False


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_bogon(ip: str, lab_networks: Iterable[Network] = ()) -> bool:
    """True for addresses that are not globally routable (RFC 6890 special purpose).

    *lab_networks* are treated as routable: tests and the demo run their
    "internet" on loopback, where every address would otherwise be a bogon.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in lab_networks):
        return False
    return not addr.is_global


def _dns_answers(observations: Iterable[DNSObservation]) -> Iterable[str]:
    for obs in observations:
        yield from obs.answers
        yield from obs.late_answers


def compute_hints(
    dns: list[DNSObservation],
    tls: list[TLSObservation],
    lab_networks: Iterable[Network] = (),
) -> list[str]:
    """The hints these observations show, in ``Hint`` order. Pure: reads, never writes."""
    found: set[Hint] = set()
    answers = list(_dns_answers(dns))
    nets = tuple(lab_networks)
    if any(is_forged(ip) for ip in answers):
        found.add(Hint.DNS_FORGED_IP)
    if any(is_bogon(ip, nets) for ip in answers):
        found.add(Hint.DNS_BOGON)
    if any(not obs.responses_agree for obs in dns):
        found.add(Hint.DNS_DUPLICATE_ANSWERS)
    if any(obs.injection_sink and obs.responses > 0 for obs in dns):
        found.add(Hint.DNS_INJECTION)
    decoy_ok = {(o.ip, o.port) for o in tls if o.decoy and o.failure is None}
    for obs in tls:
        if obs.decoy:
            continue
        # Only a handshake that started counts: if the second connect failed, no
        # ClientHello with the instance's name was ever sent (IP-level, or residue).
        handshake_failed = obs.failed_operation == Operation.TLS_HANDSHAKE.value
        if (
            handshake_failed
            and obs.failure in SNI_BLOCK_FAILURES
            and (obs.ip, obs.port) in decoy_ok
        ):
            found.add(Hint.TLS_SNI_BLOCKED)
        if obs.failure in MITM_FAILURES:
            found.add(Hint.TLS_MITM)
    return [hint.value for hint in Hint if hint in found]
