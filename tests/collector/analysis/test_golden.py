"""Golden verdicts: one named scenario per rule and per trap, with its flags and reasons.

Each case is a probe measurement, the control's measurements and a context; the
expected verdict is composed from the named enums, never magic strings, so a
renamed rule id fails here first. Changing an expected verdict means changing a
rule: bump ``RULES_VERSION`` and docs/methodology.md with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from collector.analysis import (
    Context,
    Flag,
    Reason,
    Trigger,
    analyze,
    dns_silent,
    read,
    sni_triggers,
)
from tests.collector.analysis.builders import (
    BOGON_IP,
    CDN_IP,
    FORGED_IP,
    OTHER_IP,
    REAL_IP,
    SIBLING_IP,
    STARTED,
    asn_of,
    control,
    dns,
    failed_control,
    handshakes,
    http,
    measurement,
    reached,
    tcp,
    tls,
)

CTX = Context(asn_of=asn_of)


@dataclass(frozen=True)
class Case:
    name: str
    probe: dict[str, Any]
    flags: set[Flag]
    reasons: tuple[Reason, ...]
    controls: list[dict[str, Any]] = field(default_factory=lambda: [control()])
    ctx: Context = CTX


def residue_ctx(seconds_before: float) -> Context:
    trigger = Trigger(ip=REAL_IP, port=443, at=STARTED - timedelta(seconds=seconds_before))
    return Context(asn_of=asn_of, triggers=(trigger,))


def refused_on_real() -> dict[str, Any]:
    return measurement(tcp_steps=[tcp(REAL_IP, "connection_refused")])


CASES = [
    Case("reached", reached(), {Flag.OK}, (Reason.OK_REACHED,)),
    # DNS
    Case(
        "forged_ip",
        measurement(dns_steps=[dns(FORGED_IP)]),
        {Flag.DNS},
        (Reason.DNS_FORGED_IP,),
    ),
    Case("bogon", measurement(dns_steps=[dns(BOGON_IP)]), {Flag.DNS}, (Reason.DNS_BOGON,)),
    # A NAT64 answer (RFC 6052) that embeds the private address: a bogon since 2026.12.1.
    Case(
        "bogon_wrapped_in_nat64",
        measurement(dns_steps=[dns("64:ff9b::a0a:2222")]),
        {Flag.DNS},
        (Reason.DNS_BOGON,),
    ),
    Case(
        "injection_disagreeing_responses",
        reached(dns_steps=[dns(REAL_IP, late=(SIBLING_IP,), agree=False)]),
        {Flag.DNS},
        (Reason.DNS_INJECTION,),
    ),
    Case(
        "injection_sink_answered",
        reached(dns_steps=[dns(REAL_IP), dns(REAL_IP, sink=True)]),
        {Flag.DNS},
        (Reason.DNS_INJECTION,),
    ),
    Case(
        "nxdomain_while_control_resolves",
        measurement(dns_steps=[dns(failure="dns_nxdomain_error")]),
        {Flag.DNS},
        (Reason.DNS_RCODE,),
    ),
    Case(
        "servfail_while_control_fails_too",
        measurement(dns_steps=[dns(failure="dns_servfail_error")]),
        {Flag.DOWN},
        (Reason.DOWN_CONTROL_FAILED_TOO,),
        controls=[measurement(dns_steps=[dns(failure="dns_servfail_error")])],
    ),
    Case(
        "timeout_on_every_a_query",
        measurement(
            dns_steps=[
                dns(failure="generic_timeout_error"),
                dns(failure="generic_timeout_error", transport="tcp"),
                dns(failure="generic_timeout_error", query_type="AAAA"),
            ]
        ),
        {Flag.DNS},
        (Reason.DNS_RCODE, Reason.TRAP_AAAA_NO_ANSWER),
    ),
    Case(
        # The same, when most of the probe's round got no DNS either: its network.
        "timeout_on_every_a_query_while_the_whole_round_failed",
        measurement(
            dns_steps=[
                dns(failure="generic_timeout_error"),
                dns(failure="generic_timeout_error", transport="tcp"),
                dns(failure="generic_timeout_error", query_type="AAAA"),
            ]
        ),
        {Flag.UNKNOWN},
        (Reason.VANTAGE_DNS_UNREACHABLE,),
        ctx=Context(asn_of=asn_of, vantage_dns_failing=True),
    ),
    Case(
        # ... unless the control cannot resolve either: the instance's DNS is down.
        "whole_round_silent_and_control_silent_too_is_down",
        measurement(
            dns_steps=[
                dns(failure="generic_timeout_error"),
                dns(failure="generic_timeout_error", transport="tcp"),
            ]
        ),
        {Flag.DOWN},
        (Reason.DOWN_CONTROL_FAILED_TOO,),
        controls=[measurement(dns_steps=[dns(failure="generic_timeout_error")])],
        ctx=Context(asn_of=asn_of, vantage_dns_failing=True),
    ),
    Case(
        # A failing round does not hide what did answer: forged answers are evidence.
        "forged_answer_while_the_whole_round_failed",
        measurement(dns_steps=[dns(FORGED_IP)]),
        {Flag.DNS},
        (Reason.DNS_FORGED_IP,),
        ctx=Context(asn_of=asn_of, vantage_dns_failing=True),
    ),
    Case(
        "aaaa_without_answer_is_ignored",
        reached(dns_steps=[dns(REAL_IP), dns(query_type="AAAA")]),
        {Flag.OK},
        (Reason.OK_REACHED, Reason.TRAP_AAAA_NO_ANSWER),
    ),
    Case(
        "cdn_answer_with_valid_tls",
        reached(CDN_IP),
        {Flag.OK},
        (Reason.OK_REACHED, Reason.TRAP_CDN_VALID_TLS),
    ),
    Case(
        "unmatched_answer_with_invalid_certificate",
        measurement(
            dns_steps=[dns(OTHER_IP)],
            tcp_steps=[tcp(OTHER_IP)],
            tls_steps=handshakes(OTHER_IP, failure="ssl_unknown_authority", cert_valid=False),
        ),
        {Flag.DNS},
        (Reason.DNS_UNMATCHED_INVALID_TLS,),
    ),
    Case(
        "unmatched_answer_without_tls_evidence",
        measurement(dns_steps=[dns(OTHER_IP)], tcp_steps=[tcp(OTHER_IP, "generic_timeout_error")]),
        {Flag.UNKNOWN},
        (Reason.UNKNOWN_UNEXPLAINED,),
    ),
    Case(
        "bogon_the_control_returns_too",
        reached(dns_steps=[dns(BOGON_IP, REAL_IP)]),
        {Flag.OK},
        (Reason.OK_REACHED, Reason.TRAP_BOGON_IN_CONTROL),
        controls=[reached(dns_steps=[dns(BOGON_IP, REAL_IP)])],
    ),
    # TCP/IP
    Case(
        "tcp_blackhole",
        measurement(tcp_steps=[tcp(REAL_IP, "generic_timeout_error")]),
        {Flag.TCP_IP},
        (Reason.TCP_IP_UNREACHABLE,),
    ),
    Case(
        "tcp_blackhole_without_asn_data",
        measurement(tcp_steps=[tcp(REAL_IP, "generic_timeout_error")]),
        {Flag.TCP_IP},
        (Reason.TCP_IP_UNREACHABLE,),
        ctx=Context(),
    ),
    Case(
        "tcp_blackhole_on_an_address_of_the_same_asn",
        measurement(dns_steps=[dns(SIBLING_IP)], tcp_steps=[tcp(SIBLING_IP, "host_unreachable")]),
        {Flag.TCP_IP},
        (Reason.TCP_IP_UNREACHABLE,),
    ),
    Case(
        "tcp_refused_on_an_address_the_control_never_saw",
        measurement(dns_steps=[dns(OTHER_IP)], tcp_steps=[tcp(OTHER_IP, "connection_refused")]),
        {Flag.UNKNOWN},
        (Reason.UNKNOWN_UNEXPLAINED,),
    ),
    # TLS
    Case(
        "sni_reset",
        measurement(tcp_steps=[tcp()], tls_steps=handshakes(failure="connection_reset")),
        {Flag.TLS},
        (Reason.TLS_SNI_FILTER,),
    ),
    Case(
        "sni_drop",
        measurement(tcp_steps=[tcp()], tls_steps=handshakes(failure="generic_timeout_error")),
        {Flag.TLS},
        (Reason.TLS_SNI_FILTER,),
    ),
    Case(
        "second_connect_failed_is_not_sni_filtering",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(failure="generic_timeout_error", operation="connect"),
        ),
        {Flag.UNKNOWN},
        (Reason.UNKNOWN_UNEXPLAINED,),
    ),
    Case(
        "interception",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(failure="ssl_unknown_authority", cert_valid=False),
        ),
        {Flag.TLS},
        (Reason.TLS_INTERCEPTION,),
    ),
    # A source without decoy handshakes (OONI): the cut handshake against the control's.
    Case(
        "handshake_cut_without_a_decoy",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=[tls(decoy=False, failure="connection_reset")],
        ),
        {Flag.TLS},
        (Reason.TLS_HANDSHAKE_CUT,),
    ),
    Case(
        "a_handshake_after_a_failed_connect_is_ip_blocking_not_a_cut",
        measurement(
            tcp_steps=[tcp(failure="generic_timeout_error")],
            tls_steps=[tls(decoy=False, failure="connection_reset")],
        ),
        {Flag.TCP_IP},
        (Reason.TCP_IP_UNREACHABLE,),
    ),
    Case(
        "handshake_cut_with_a_decoy_is_judged_by_sni_filter_only",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=[
                tls(decoy=True, failure="connection_reset"),
                tls(decoy=False, failure="connection_reset", t0=0.8),
            ],
        ),
        {Flag.UNKNOWN},
        (Reason.UNKNOWN_UNEXPLAINED,),
    ),
    # HTTP
    Case(
        "http_altered",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(),
            http_steps=[http(mastodon=False, status=403)],
        ),
        {Flag.HTTP},
        (Reason.HTTP_ALTERED,),
    ),
    Case(
        "http_answer_claims_another_instance",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(),
            http_steps=[http(domain="state-approved.example")],
        ),
        {Flag.HTTP},
        (Reason.HTTP_ALTERED,),
    ),
    Case(
        "http_missing",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(),
            http_steps=[http(failure="connection_reset")],
        ),
        {Flag.HTTP},
        (Reason.HTTP_ALTERED,),
    ),
    Case(
        "http_scheme_reached",
        measurement(scheme="http", tcp_steps=[tcp()], http_steps=[http()]),
        {Flag.OK},
        (Reason.OK_REACHED,),
        controls=[measurement(scheme="http", tcp_steps=[tcp()], http_steps=[http()])],
    ),
    # Several methods at once: the GFW's usual combination.
    Case(
        "live_bar_forged_answer_then_sni_reset",
        measurement(
            dns_steps=[dns(FORGED_IP, late=(REAL_IP,), agree=False)],
            tcp_steps=[tcp(REAL_IP)],
            tls_steps=handshakes(REAL_IP, failure="connection_reset"),
        ),
        {Flag.DNS, Flag.TLS},
        (Reason.DNS_FORGED_IP, Reason.DNS_INJECTION, Reason.TLS_SNI_FILTER),
    ),
    # Control
    Case(
        "instance_down_control_fails_too",
        measurement(tcp_steps=[tcp(REAL_IP, "generic_timeout_error")]),
        {Flag.DOWN},
        (Reason.DOWN_CONTROL_FAILED_TOO,),
        controls=[failed_control()],
    ),
    Case(
        "control_missing",
        measurement(dns_steps=[dns(FORGED_IP)]),
        {Flag.UNKNOWN},
        (Reason.CONTROL_MISSING,),
        controls=[],
    ),
    Case(
        "control_failed_with_forged_evidence",
        measurement(dns_steps=[dns(FORGED_IP)]),
        {Flag.UNKNOWN},
        (Reason.CONTROL_FAILED_WITH_EVIDENCE,),
        controls=[failed_control()],
    ),
    Case(
        "reached_while_control_failed",
        reached(),
        {Flag.OK},
        (Reason.OK_REACHED_CONTROL_FAILED,),
        controls=[failed_control("connection_refused")],
    ),
    Case(
        "one_of_two_controls_reached",
        measurement(tcp_steps=[tcp(REAL_IP, "generic_timeout_error")]),
        {Flag.TCP_IP},
        (Reason.TCP_IP_UNREACHABLE,),
        controls=[failed_control(), control()],
    ),
    # Residue of an earlier SNI trigger on the same triple
    Case(
        "refused_5s_after_a_trigger_is_residue",
        refused_on_real(),
        {Flag.UNKNOWN},
        (Reason.RESIDUE_ONLY,),
        ctx=residue_ctx(5),
    ),
    Case(
        "refused_500s_after_a_trigger_is_new",
        refused_on_real(),
        {Flag.TCP_IP},
        (Reason.TCP_IP_UNREACHABLE,),
        ctx=residue_ctx(500),
    ),
    Case(
        # Residual blocking would have cut the decoy too: a working decoy means the
        # triple is open, and the reset of the instance's name is a new finding.
        "sni_reset_with_working_decoy_inside_a_residual_window_is_new",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(failure="connection_reset"),
        ),
        {Flag.TLS},
        (Reason.TLS_SNI_FILTER,),
        ctx=residue_ctx(60),
    ),
    Case(
        # A neighbour's trigger landed between this decoy (done at 0.7 s) and the
        # instance's handshake (0.8 s): the decoy proves nothing after it.
        "sni_reset_after_a_trigger_that_followed_the_decoy_is_residue",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(failure="connection_reset"),
        ),
        {Flag.UNKNOWN},
        (Reason.RESIDUE_ONLY,),
        ctx=residue_ctx(-0.75),
    ),
    Case(
        "decoy_and_sni_reset_inside_a_residual_window_is_residue",
        measurement(
            tcp_steps=[tcp()],
            tls_steps=[
                tls(decoy=True, failure="connection_reset", t0=0.6),
                tls(decoy=False, failure="connection_reset", t0=0.8),
            ],
        ),
        {Flag.UNKNOWN},
        (Reason.RESIDUE_ONLY,),
        ctx=residue_ctx(60),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_golden_verdict(case: Case) -> None:
    verdict = analyze(case.probe, case.controls, case.ctx)
    assert verdict.flags == frozenset(case.flags)
    assert verdict.reasons == tuple(reason.value for reason in case.reasons)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_read_views_give_the_same_verdict(case: Case) -> None:
    """The detection pass reads each document once and analyzes the read views."""
    probe, controls = read(case.probe), [read(c) for c in case.controls]
    assert analyze(probe, controls, case.ctx) == analyze(case.probe, case.controls, case.ctx)
    assert dns_silent(probe) == dns_silent(case.probe)
    assert sni_triggers(probe) == sni_triggers(case.probe)


def test_every_rule_and_trap_has_a_golden_case() -> None:
    covered = {reason for case in CASES for reason in case.reasons}
    assert covered == set(Reason)


def test_case_names_are_unique() -> None:
    assert len({case.name for case in CASES}) == len(CASES)
