"""Properties of the verdict function: total, pure, deterministic, versioned."""

from __future__ import annotations

import copy
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from collector.analysis import (
    BLOCK_FLAGS,
    RULES_VERSION,
    Context,
    Flag,
    Reason,
    Trigger,
    Verdict,
    analyze,
    sni_triggers,
)
from tests.collector.analysis.builders import (
    BOGON_IP,
    FORGED_IP,
    REAL_IP,
    STARTED,
    asn_of,
    control,
    dns,
    failed_control,
    handshakes,
    measurement,
    reached,
    tcp,
)

LIVE_BAR = measurement(
    dns_steps=[dns(FORGED_IP, late=(REAL_IP,), agree=False)],
    tcp_steps=[tcp(REAL_IP)],
    tls_steps=handshakes(REAL_IP, failure="connection_reset"),
)


def test_flags_and_block_flags() -> None:
    assert [flag.value for flag in Flag] == [
        "dns",
        "tcp_ip",
        "tls",
        "http",
        "ok",
        "down",
        "unknown",
    ]
    assert frozenset({Flag.DNS, Flag.TCP_IP, Flag.TLS, Flag.HTTP}) == BLOCK_FLAGS


def test_verdict_is_deterministic_and_leaves_inputs_alone() -> None:
    probe, controls = LIVE_BAR, [control(), failed_control()]
    before = copy.deepcopy((probe, controls))
    first = analyze(probe, controls, Context(asn_of=asn_of))
    second = analyze(copy.deepcopy(probe), copy.deepcopy(controls), Context(asn_of=asn_of))
    assert first == second
    assert first.to_json() == second.to_json()
    assert (probe, controls) == before


def test_to_json_carries_the_rule_version() -> None:
    verdict = analyze(LIVE_BAR, [control()], Context(asn_of=asn_of))
    assert verdict.blocked
    assert verdict.rule_version == RULES_VERSION
    assert verdict.to_json() == {
        "flags": ["dns", "tls"],
        "reasons": ["dns.forged_ip", "dns.injection", "tls.sni_filter"],
        "rule_version": RULES_VERSION,
    }
    assert Verdict.from_json(verdict.to_json()) == verdict


def test_rules_version_is_year_month_serial() -> None:
    year, month, serial = (int(part) for part in RULES_VERSION.split("."))
    assert year >= 2026 and 1 <= month <= 12 and serial >= 1


@pytest.mark.parametrize(
    "flags",
    [set(), {Flag.OK, Flag.DNS}, {Flag.OK, Flag.DOWN}, {Flag.UNKNOWN, Flag.TLS}],
)
def test_a_verdict_is_blocks_or_exactly_one_state(flags: set[Flag]) -> None:
    with pytest.raises(ValueError, match="not a verdict"):
        Verdict(flags=frozenset(flags), reasons=())


@pytest.mark.parametrize(
    "data",
    [{}, {"flags": ["ok"], "reasons": [1], "rule_version": "x"}, {"flags": ["bogus"]}, []],
)
def test_from_json_rejects_what_to_json_never_writes(data: Any) -> None:
    with pytest.raises(ValueError, match=r"not a verdict|is not a valid Flag"):
        Verdict.from_json(data)


def test_states_are_not_blocked() -> None:
    assert not analyze(reached(), [control()]).blocked
    assert not analyze(LIVE_BAR, []).blocked


MALFORMED: list[Any] = [
    {},
    {"dns": "not a list", "tcp": None, "tls": 3, "http": {"a": 1}},
    {"dns": [None, 1, "x", {"answers": "45.76.1.2", "late_answers": [None, 7, "not-an-ip"]}]},
    {"dns": [{"query_type": 5, "responses": "two", "responses_agree": "no"}]},
    {"tcp": [{"ip": 5}, {"ip": "45.76.1.2", "port": "443", "t0": "soon", "failure": 7}]},
    {"tls": [{"ip": "45.76.1.2", "decoy": "yes", "cert_valid": "true", "t": float("nan")}]},
    {"tls": [{"ip": "45.76.1.2", "t0": 1e300}, {"ip": "45.76.1.2", "t0": -1e300}]},
    {"http": [{"ip": "::1", "status_code": True, "mastodon": 1, "instance_domain": 5}]},
    {"started_at": 12, "tcp": [{"ip": "45.76.1.2", "t0": 0.1, "failure": None}]},
    {"started_at": "yesterday", "scheme": ["https"], "port": None},
    {"started_at": "9999-12-31T23:59:59Z", "tcp": [{"ip": "45.76.1.2", "t0": 1e9}]},
    {**LIVE_BAR, "started_at": None},
]


@pytest.mark.parametrize("probe", MALFORMED)
@pytest.mark.parametrize(
    "controls",
    [[control()], [{}], [{"dns": [{"answers": ["bad"]}], "tls": [{"ip": None}]}], []],
)
def test_malformed_input_never_raises(probe: dict[str, Any], controls: list[Any]) -> None:
    trigger = Trigger(ip="45.76.1.2", port=443, at=STARTED)
    verdict = analyze(probe, controls, Context(asn_of=asn_of, triggers=(trigger,)))
    assert verdict.flags  # a valid verdict (checked by Verdict itself)
    assert sni_triggers(probe) == ()


def test_non_mapping_records_read_as_absent() -> None:
    nothing: Any = None
    junk: Any = [None, "x", 3]
    assert analyze(nothing, junk).reasons == (Reason.CONTROL_MISSING.value,)
    assert analyze(nothing, [control()]).reasons == (Reason.UNKNOWN_UNEXPLAINED.value,)


def test_a_mistyped_failure_is_never_read_as_success() -> None:
    probe = reached()
    probe["tls"][1]["failure"] = {"oops": 1}
    assert analyze(probe, [control()], Context(asn_of=asn_of)).flags == {Flag.UNKNOWN}


def test_asn_of_only_sees_valid_canonical_addresses() -> None:
    seen: list[str] = []

    def recording(ip: str) -> int | None:
        seen.append(ip)
        ipaddress.ip_address(ip)  # raises on junk
        return None

    probe = measurement(
        dns_steps=[dns("2A01:04F8:0C17:0001::0002", late=("junk",))],
        tcp_steps=[tcp("2a01:4f8:c17:1::2", "generic_timeout_error")],
    )
    analyze(probe, [control(), {"dns": [{"answers": ["nonsense", 4]}]}], Context(asn_of=recording))
    assert "2a01:4f8:c17:1::2" in seen
    assert all(ip == ipaddress.ip_address(ip).compressed for ip in seen)
    assert len(seen) == len(set(seen))  # one lookup per address


def test_bogus_asn_answers_are_unknown() -> None:
    probe = measurement(
        dns_steps=[dns("45.76.7.7")], tcp_steps=[tcp("45.76.7.7", "generic_timeout_error")]
    )
    verdict = analyze(probe, [control()], Context(asn_of=lambda ip: 0))
    assert verdict.reasons == (Reason.UNKNOWN_UNEXPLAINED.value,)


def test_lab_networks_are_routable() -> None:
    lab = ipaddress.ip_network("10.10.0.0/16")
    probe = measurement(dns_steps=[dns(BOGON_IP)])
    assert analyze(probe, [control()]).reasons == (Reason.DNS_BOGON.value,)
    assert analyze(probe, [control()], Context(lab_networks=(lab,))).flags == {Flag.UNKNOWN}


def test_sni_triggers_time_the_failed_handshake() -> None:
    (trigger,) = sni_triggers(LIVE_BAR)
    instance = LIVE_BAR["tls"][1]
    assert trigger == Trigger(ip=REAL_IP, port=443, at=STARTED + timedelta(seconds=instance["t"]))
    assert trigger.at.tzinfo is not None and trigger.at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "probe",
    [
        reached(),
        measurement(
            tcp_steps=[tcp()], tls_steps=handshakes(failure="connection_reset", operation="connect")
        ),
        measurement(
            tcp_steps=[tcp()],
            tls_steps=handshakes(failure="ssl_unknown_authority", cert_valid=False),
        ),
        measurement(
            tcp_steps=[tcp()],
            tls_steps=[handshakes(failure="connection_reset")[1]],  # no working decoy
        ),
    ],
    ids=["reached", "second_connect", "interception", "no_decoy"],
)
def test_no_sni_trigger_without_the_pattern(probe: dict[str, Any]) -> None:
    assert sni_triggers(probe) == ()


@pytest.mark.parametrize(
    "started_at",
    [
        "2026-11-21T10:00:00.123456Z",
        "2026-11-21T10:00:00.123456z",
        "2026-11-21T10:00:00.123456+00:00",
        "2026-11-21T11:00:00.123456+01:00",
        "2026-11-21T10:00:00.123456",
        " 2026-11-21T10:00:00.123456Z ",
    ],
)
def test_started_at_is_parsed_robustly(started_at: str) -> None:
    probe = {**LIVE_BAR, "started_at": started_at}
    (trigger,) = sni_triggers(probe)
    assert trigger.at == STARTED + timedelta(seconds=LIVE_BAR["tls"][1]["t"])


def test_a_measurement_is_not_residue_of_its_own_trigger() -> None:
    ctx = Context(asn_of=asn_of, triggers=sni_triggers(LIVE_BAR))
    assert analyze(LIVE_BAR, [control()], ctx).flags == {Flag.DNS, Flag.TLS}


def test_residual_window_is_a_setting() -> None:
    probe = measurement(tcp_steps=[tcp(REAL_IP, "connection_refused")])
    trigger = Trigger(ip=REAL_IP, port=443, at=STARTED - timedelta(seconds=100))
    short = Context(asn_of=asn_of, triggers=(trigger,), residual_seconds=90)
    default = Context(asn_of=asn_of, triggers=(trigger,))
    assert analyze(probe, [control()], short).flags == {Flag.TCP_IP}
    assert analyze(probe, [control()], default).reasons == (Reason.RESIDUE_ONLY.value,)


def test_residue_is_per_port_and_per_address() -> None:
    probe = measurement(tcp_steps=[tcp(REAL_IP, "connection_refused")])
    other_port = Trigger(ip=REAL_IP, port=8443, at=STARTED)
    other_ip = Trigger(ip="45.76.1.3", port=443, at=STARTED)
    ctx = Context(asn_of=asn_of, triggers=(other_port, other_ip))
    assert analyze(probe, [control()], ctx).flags == {Flag.TCP_IP}


def test_a_naive_trigger_time_is_read_as_utc() -> None:
    probe = measurement(tcp_steps=[tcp(REAL_IP, "connection_refused")])
    naive = datetime(2026, 11, 21, 10, 0, 0)
    ctx = Context(asn_of=asn_of, triggers=(Trigger(ip=REAL_IP, port=443, at=naive),))
    assert analyze(probe, [control()], ctx).reasons == (Reason.RESIDUE_ONLY.value,)
    assert STARTED.tzinfo is UTC
