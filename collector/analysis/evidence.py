"""The rules' predicates: what the control saw, which steps are residue, what each rule finds.

Called by ``collector.analysis.verdict.analyze``, which decides in docs/methodology.md's
order; every function here is pure and reads only the typed views of
``collector.analysis.reading``. docs/methodology.md gives each rule's reason and
source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from collector.analysis.model import Context, Reason, Trigger
from collector.analysis.reading import HTTPStep, Observed, Step, TLSStep, canonical_ip, shift
from probe_agent.protocol.addresses import is_bogon, is_forged
from probe_agent.protocol.vocabulary import SNI_BLOCK_FAILURES, Failure, Operation

Address = tuple[str, int]

CERT_FAILURES = frozenset(
    {
        Failure.SSL_UNKNOWN_AUTHORITY.value,
        Failure.SSL_INVALID_HOSTNAME.value,
        Failure.SSL_INVALID_CERTIFICATE.value,
    }
)
# What a blackholed or rejected address does to a connect.
CONNECT_FAILURES = frozenset(
    {
        Failure.GENERIC_TIMEOUT.value,
        Failure.CONNECTION_REFUSED.value,
        Failure.CONNECTION_RESET.value,
        Failure.HOST_UNREACHABLE.value,
        Failure.NETWORK_UNREACHABLE.value,
        Failure.CONNECTION_ABORTED.value,
    }
)
# A-query failures that are blocking when every A query ends so and the control resolves.
RCODE_FAILURES = frozenset(
    {
        Failure.DNS_SERVFAIL.value,
        Failure.DNS_REFUSED.value,
        Failure.GENERIC_TIMEOUT.value,
        Failure.DNS_NO_ANSWER.value,
    }
)


class ASNLookup:
    """``Context.asn_of`` with None for unknown (None, 0, junk), asked once per address."""

    def __init__(self, asn_of: Callable[[str], int | None]) -> None:
        self._asn_of = asn_of
        self._known: dict[str, int | None] = {}

    def __call__(self, ip: str) -> int | None:
        if ip not in self._known:
            asn = self._asn_of(ip)
            valid = isinstance(asn, int) and not isinstance(asn, bool) and asn > 0
            self._known[ip] = asn if valid else None
        return self._known[ip]


def key(step: Step) -> Address:
    return (step.ip, step.port)


def validated(step: TLSStep) -> bool:
    return step.failure is None and step.cert_valid is True


def invalid_cert(step: TLSStep) -> bool:
    return step.cert_valid is False or step.failure in CERT_FAILURES


def sni_filtered(tls: Iterable[TLSStep]) -> list[TLSStep]:
    """Instance-SNI handshakes cut (reset, timeout, EOF) where the decoy on the same
    address worked; a failed second *connect* sent no ClientHello, so it does not count."""
    steps = list(tls)
    decoy_ok = {key(s) for s in steps if s.decoy and s.failure is None}
    return [
        s
        for s in steps
        if not s.decoy
        and s.failed_operation == Operation.TLS_HANDSHAKE.value
        and s.failure in SNI_BLOCK_FAILURES
        and key(s) in decoy_ok
    ]


@dataclass(frozen=True, slots=True)
class ControlView:
    answers: frozenset[str]  # every address any control resolved (A and AAAA, late too)
    asns: frozenset[int]
    ok: bool  # some control reached the instance
    connects: bool
    resolves: bool  # some control A query got addresses
    mastodon: bool  # some control got a fediverse API answer
    domains: frozenset[str]  # the instance domains those answers claim
    tls_validated: bool  # some control instance-SNI handshake validated


def _control_reached(control: Observed) -> bool:
    if control.scheme == "http":
        return any(h.status_code is not None and h.failure is None for h in control.http)
    return any(not s.decoy and s.failure is None and s.cert_valid is not False for s in control.tls)


def control_view(controls: Sequence[Observed], asn: ASNLookup) -> ControlView:
    answers = frozenset(
        ip for c in controls for d in c.dns if not d.injection_sink for ip in d.answers
    )
    resolves = any(
        d.answers
        for c in controls
        for d in c.dns
        if not d.injection_sink and (d.query_type or "").upper() == "A"
    )
    mastodon = [h for c in controls for h in c.http if h.mastodon]
    return ControlView(
        answers=answers,
        asns=frozenset(a for a in map(asn, answers) if a is not None),
        ok=any(_control_reached(c) for c in controls),
        connects=any(s.failure is None for c in controls for s in c.tcp),
        resolves=resolves,
        mastodon=bool(mastodon),
        domains=frozenset(h.instance_domain for h in mastodon if h.instance_domain),
        tls_validated=any(validated(s) for c in controls for s in c.tls if not s.decoy),
    )


def residue(probe: Observed, ctx: Context) -> frozenset[Address]:
    """Addresses with a step inside a trigger's residual window: the GFW keeps blocking
    the (client, server, port) triple for a while after an SNI trigger, so a failure
    there proves nothing. Residue covers every tcp, tls and http step of the address.

    Residual blocking blocks the whole triple, so it cannot let a handshake through:
    a trigger is ignored when a decoy handshake on that triple worked *after* it,
    and an SNI reset there is a new finding (this also keeps a probe that
    re-measures a blocked name sooner than the residual time from hiding the block
    behind its own earlier triggers). A decoy that worked before the trigger proves
    nothing about the steps after it."""
    window = ctx.residual_seconds
    if not isinstance(window, int | float) or not math.isfinite(window) or window < 0:
        window = 0.0
    triggers: dict[Address, list[Trigger]] = {}
    for trigger in ctx.triggers:
        ip = canonical_ip(trigger.ip)
        if ip is not None:
            triggers.setdefault((ip, trigger.port), []).append(trigger)
    # When each triple was last seen open: a decoy handshake that worked, by its end.
    open_at: dict[Address, datetime] = {}
    for s in probe.tls:
        done = shift(probe.started_at, s.t)
        if s.decoy and s.failure is None and done is not None:
            open_at[key(s)] = max(done, open_at.get(key(s), done))
    found: set[Address] = set()
    for step in (*probe.tcp, *probe.tls, *probe.http):
        when = probe.at(step)
        if when is None or key(step) not in triggers:
            continue
        for trigger in triggers[key(step)]:
            start = trigger.at if trigger.at.tzinfo else trigger.at.replace(tzinfo=UTC)
            reopened = open_at.get(key(step))
            if reopened is not None and reopened >= start:
                continue  # the triple was open after this trigger: no residue from it
            if start <= when <= start + timedelta(seconds=window):
                found.add(key(step))
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class ProbeView:
    """The probe's measurement with residue steps set aside."""

    seen: Observed
    residue: frozenset[Address]
    answers: tuple[str, ...]  # non-sink DNS answers, first and late

    @classmethod
    def of(cls, probe: Observed, ctx: Context) -> ProbeView:
        answers = tuple(ip for d in probe.dns if not d.injection_sink for ip in d.answers)
        return cls(seen=probe, residue=residue(probe, ctx), answers=answers)

    def tcp(self) -> list[Step]:
        return [s for s in self.seen.tcp if key(s) not in self.residue]

    def tls(self) -> list[TLSStep]:
        return [s for s in self.seen.tls if key(s) not in self.residue]

    def instance_tls(self) -> list[TLSStep]:
        return [s for s in self.tls() if not s.decoy]

    def http(self) -> list[HTTPStep]:
        return [s for s in self.seen.http if key(s) not in self.residue]

    def failed_outside_residue(self) -> bool:
        return any(s.failure is not None for s in (*self.tcp(), *self.tls(), *self.http()))


def consistent(ip: str, control: ControlView, asn: ASNLookup) -> bool:
    """The control resolved this address, or one in the same (known) ASN."""
    if ip in control.answers:
        return True
    number = asn(ip)
    return number is not None and number in control.asns


def matches_control(step: HTTPStep, control: ControlView) -> bool:
    """A fediverse answer claiming the control's instance (or claiming no name)."""
    if not step.mastodon:
        return False
    return (
        step.instance_domain is None
        or not control.domains
        or step.instance_domain in control.domains
    )


def probe_reached(probe: Observed, control: ControlView) -> bool:
    """The probe got the instance: a validated handshake (or an HTTP answer for
    ``http``), and the control's fediverse answer too when the control got one."""
    if probe.scheme == "http":
        reached = any(h.failure is None and h.status_code is not None for h in probe.http)
    else:
        reached = any(validated(s) for s in probe.tls if not s.decoy)
    if reached and control.mastodon:
        return any(matches_control(h, control) for h in probe.http)
    return reached


def local_evidence(probe: ProbeView, control: ControlView, ctx: Context) -> set[Reason]:
    """Rules whose evidence needs no working control: forged or bogon answers the
    control never gave, injection, SNI filtering; plus the bogon trap."""
    found: set[Reason] = set()
    fresh = [ip for ip in probe.answers if ip not in control.answers]
    if any(is_forged(ip) for ip in fresh):
        found.add(Reason.DNS_FORGED_IP)
    if any(is_bogon(ip, ctx.lab_networks) for ip in fresh):
        found.add(Reason.DNS_BOGON)
    if any(ip in control.answers and is_bogon(ip, ctx.lab_networks) for ip in probe.answers):
        found.add(Reason.TRAP_BOGON_IN_CONTROL)
    if any(
        (not d.injection_sink and not d.responses_agree) or (d.injection_sink and d.responses > 0)
        for d in probe.seen.dns
    ):
        found.add(Reason.DNS_INJECTION)
    if sni_filtered(probe.tls()):
        found.add(Reason.TLS_SNI_FILTER)
    return found


def _dns_rules(probe: ProbeView, control: ControlView, asn: ASNLookup) -> set[Reason]:
    found: set[Reason] = set()
    instance_tls = probe.instance_tls()
    for ip in dict.fromkeys(probe.answers):
        if consistent(ip, control, asn):
            continue
        handshakes = [s for s in instance_tls if s.ip == ip]
        if any(invalid_cert(s) for s in handshakes):
            found.add(Reason.DNS_UNMATCHED_INVALID_TLS)
        if any(validated(s) for s in handshakes):
            found.add(Reason.TRAP_CDN_VALID_TLS)
    queries = [d for d in probe.seen.dns if not d.injection_sink]
    a_queries = [d for d in queries if (d.query_type or "").upper() == "A"]
    if control.resolves and a_queries:
        nxdomain = any(d.failure == Failure.DNS_NXDOMAIN.value for d in a_queries)
        all_failed = not any(d.answers for d in a_queries) and all(
            d.failure in RCODE_FAILURES for d in a_queries
        )
        if nxdomain or all_failed:
            found.add(Reason.DNS_RCODE)
    if any((d.query_type or "").upper() == "AAAA" and not d.answers for d in queries):
        found.add(Reason.TRAP_AAAA_NO_ANSWER)
    return found


def block_evidence(
    probe: ProbeView, control: ControlView, ctx: Context, asn: ASNLookup
) -> set[Reason]:
    """Every blocking rule and trap; meaningful only when the control reached the instance."""
    found = local_evidence(probe, control, ctx) | _dns_rules(probe, control, asn)
    tcp = probe.tcp()
    if (
        tcp
        and control.connects
        and all(s.failure in CONNECT_FAILURES for s in tcp)
        and any(consistent(s.ip, control, asn) for s in tcp)
    ):
        found.add(Reason.TCP_IP_UNREACHABLE)
    instance_tls = probe.instance_tls()
    if control.tls_validated and any(
        invalid_cert(s) and consistent(s.ip, control, asn) for s in instance_tls
    ):
        found.add(Reason.TLS_INTERCEPTION)
    if handshake_cut(probe, control, asn):
        found.add(Reason.TLS_HANDSHAKE_CUT)
    if probe.seen.scheme == "http":
        reached = any(s.failure is None for s in tcp)
    else:
        reached = any(validated(s) for s in instance_tls)
    http = probe.http()
    if reached and control.mastodon and http and not any(matches_control(h, control) for h in http):
        found.add(Reason.HTTP_ALTERED)
    return found


def handshake_cut(probe: ProbeView, control: ControlView, asn: ASNLookup) -> bool:
    """For a source that makes no decoy handshake (OONI): the instance-SNI handshake was
    cut (reset, timeout, EOF) after its connect worked, on an address the control
    resolved (or in the same ASN), while the control's own handshake validated.
    Blockwatch's probes always make the decoy handshake, and are judged by
    ``tls.sni_filter`` instead: this rule never reads a record that has one."""
    tls = probe.tls()
    if any(s.decoy for s in tls) or not control.tls_validated:
        return False
    connected = {key(s) for s in probe.tcp() if s.failure is None}
    return any(
        s.failed_operation == Operation.TLS_HANDSHAKE.value
        and s.failure in SNI_BLOCK_FAILURES
        and key(s) in connected
        and consistent(s.ip, control, asn)
        for s in tls
    )
