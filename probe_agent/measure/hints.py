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

The set is closed (``probe_agent.protocol.vocabulary.Hint``) and documented in
docs/measurement-format.md. What counts as forged or bogon is decided by
``probe_agent.protocol.addresses``, which the collector's analysis uses too.
"""

from __future__ import annotations

from collections.abc import Iterable

from probe_agent.measure.observations import DNSObservation, TLSObservation
from probe_agent.protocol.addresses import IPNetwork, is_bogon, is_forged
from probe_agent.protocol.vocabulary import MITM_FAILURES, SNI_BLOCK_FAILURES, Hint, Operation


def _dns_answers(observations: Iterable[DNSObservation]) -> Iterable[str]:
    for obs in observations:
        yield from obs.answers
        yield from obs.late_answers


def compute_hints(
    dns: list[DNSObservation],
    tls: list[TLSObservation],
    lab_networks: Iterable[IPNetwork] = (),
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
