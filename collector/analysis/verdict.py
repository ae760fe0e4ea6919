"""The per-measurement verdict: a pure function of the probe's observations and the control's.

In the data flow (docs/architecture.md) this sits between ingestion and the detector: the
collector stores a probe's signed measurement, matches it with the control
vantage's measurements of the same domain, and calls ``analyze``; the detector
turns verdicts over time into block events. ``analyze`` does no I/O, never
mutates its inputs and never raises on malformed input (missing or mistyped
fields read as absent): the same inputs always give the same verdict.

The order of decision (docs/methodology.md):

1. no control: unknown; the probe's whole round without DNS (``Context.
   vantage_dns_failing``) and this measurement too: unknown;
2. residue: steps on a triple the same probe triggered an SNI filter on, within
   ``Context.residual_seconds``, are set aside;
3. blocking rules (only when the control reached the instance) and traps;
4. any blocking rule: the block flags;
5. the probe reached the instance: ok;
6. the control failed too: down, or unknown when the probe showed evidence that
   needs no control (a control failure never makes a block);
7. every failure was residue: unknown;
8. otherwise unknown (an unmatched answer without TLS evidence is never enough).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from collector.analysis.evidence import (
    ASNLookup,
    ProbeView,
    block_evidence,
    control_view,
    local_evidence,
    probe_reached,
    sni_filtered,
)
from collector.analysis.model import REASON_FLAGS, Context, Flag, Reason, Trigger, Verdict
from collector.analysis.reading import Observed, Record, read, shift
from probe_agent.protocol.vocabulary import Failure

_DEFAULT_CONTEXT = Context()
# Evidence that holds without a working control, yet is not enough to block on when
# the control could not reach the instance either.
_LOCAL_BLOCK_REASONS = frozenset(
    {Reason.DNS_FORGED_IP, Reason.DNS_BOGON, Reason.DNS_INJECTION, Reason.TLS_SNI_FILTER}
)


def _verdict(flag: Flag, reasons: Iterable[Reason]) -> Verdict:
    return Verdict(flags=frozenset({flag}), reasons=_in_rule_order(reasons))


def _in_rule_order(reasons: Iterable[Reason]) -> tuple[str, ...]:
    chosen = set(reasons)
    return tuple(reason.value for reason in Reason if reason in chosen)


def analyze(
    measurement: Record,
    controls: Sequence[Record],
    ctx: Context = _DEFAULT_CONTEXT,
) -> Verdict:
    """The verdict on one probe *measurement*, given the control vantage's
    measurements of the same domain matched by time (*controls*; empty: none).
    Each is a measurement dict or the ``read`` view of one (the same verdict)."""
    control_records = [c for c in controls if isinstance(c, Mapping | Observed)]
    if not control_records:
        return _verdict(Flag.UNKNOWN, [Reason.CONTROL_MISSING])
    asn = ASNLookup(ctx.asn_of)
    control = control_view([read(c) for c in control_records], asn)
    # The probe's whole round without DNS while the control resolves: its network.
    # (When the control cannot resolve either, the instance's DNS is down: below.)
    if ctx.vantage_dns_failing and control.resolves and dns_silent(measurement):
        return _verdict(Flag.UNKNOWN, [Reason.VANTAGE_DNS_UNREACHABLE])
    probe = ProbeView.of(read(measurement), ctx)
    reached = probe_reached(probe.seen, control)

    if not control.ok:
        if reached:
            return _verdict(Flag.OK, [Reason.OK_REACHED_CONTROL_FAILED])
        if local_evidence(probe, control, ctx) & _LOCAL_BLOCK_REASONS:
            return _verdict(Flag.UNKNOWN, [Reason.CONTROL_FAILED_WITH_EVIDENCE])
        return _verdict(Flag.DOWN, [Reason.DOWN_CONTROL_FAILED_TOO])

    found = block_evidence(probe, control, ctx, asn)
    traps = {reason for reason in found if reason not in REASON_FLAGS}
    blocks = found - traps
    if blocks:
        return Verdict(
            flags=frozenset(REASON_FLAGS[reason] for reason in blocks),
            reasons=_in_rule_order(found),
        )
    if reached:
        return _verdict(Flag.OK, [Reason.OK_REACHED, *traps])
    if probe.residue and not probe.failed_outside_residue():
        return _verdict(Flag.UNKNOWN, [Reason.RESIDUE_ONLY, *traps])
    return _verdict(Flag.UNKNOWN, [Reason.UNKNOWN_UNEXPLAINED, *traps])


def dns_silent(measurement: Record) -> bool:
    """True when no DNS query of *measurement* got any answer and every A query timed
    out: the resolver was unreachable. Alone it is evidence (``dns.rcode``); when
    most of the probe's round looks like this, it is the probe's own network."""
    seen = read(measurement)
    queries = [d for d in seen.dns if not d.injection_sink]
    a_queries = [d for d in queries if d.query_type == "A"]
    return (
        bool(a_queries)
        and not any(d.answers for d in queries)
        and all(d.failure == Failure.GENERIC_TIMEOUT.value for d in a_queries)
    )


def sni_triggers(measurement: Record) -> tuple[Trigger, ...]:
    """The SNI triggers in *measurement*: on (ip, port) the decoy handshake worked and
    the instance-SNI handshake was reset, timed out or cut. ``at`` is ``started_at``
    plus that handshake's ``t`` (its ``t0`` when ``t`` is absent); a measurement
    without a readable ``started_at`` yields none, since they could not be placed in time."""
    seen = read(measurement)
    found: dict[Trigger, None] = {}
    for step in sni_filtered(seen.tls):
        at = shift(seen.started_at, step.t if step.t is not None else step.t0)
        if at is not None:
            found[Trigger(ip=step.ip, port=step.port, at=at)] = None
    return tuple(found)
