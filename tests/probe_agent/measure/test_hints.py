"""Local hints: each one from the observations that show it, none from clean ones."""

from __future__ import annotations

import ipaddress

from probe_agent.measure.hints import compute_hints
from probe_agent.measure.observations import DNSObservation, TLSObservation
from probe_agent.protocol.addresses import forged_pool, is_bogon, is_forged
from probe_agent.protocol.vocabulary import Failure, Hint


def dns(answers: list[str], late: list[str] | None = None, *, sink: bool = False) -> DNSObservation:
    return DNSObservation(
        t0=0.0,
        t=0.1,
        resolver="192.0.2.53:53",
        transport="udp",
        query_type="A",
        rcode="NOERROR",
        answers=answers,
        late_answers=late or [],
        responses=1 + bool(late),
        responses_agree=not late,
        injection_sink=sink,
    )


def tls(
    ip: str, *, decoy: bool, failure: Failure | None, operation: str = "tls_handshake"
) -> TLSObservation:
    return TLSObservation(
        t0=0.0,
        t=0.1,
        ip=ip,
        port=443,
        sni="example.com" if decoy else "alive.bar",
        decoy=decoy,
        failure=failure.value if failure else None,
        failed_operation=operation if failure else None,
    )


def test_forged_pool_is_shipped_complete() -> None:
    pool = forged_pool()
    # 592 IPv4 + 30 IPv6 from Wallbleed, 9 from OONI (one overlaps at most).
    assert len(pool) >= 592 + 30
    assert is_forged("8.7.198.45")  # OONI's list
    assert is_forged("208.77.47.172")  # first of the Wallbleed v4 pool
    assert is_forged("2a03:2880:f130:83:face:b00c:0:25de")  # Wallbleed v6
    assert not is_forged("1.1.1.1")
    assert not is_forged("not an ip")


def test_bogons() -> None:
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "100.64.0.1", "0.0.0.0", "::1", "fe80::1"):
        assert is_bogon(ip), ip
    assert not is_bogon("1.1.1.1")
    assert not is_bogon("2606:4700::1111")
    assert is_bogon("::ffff:10.0.0.1")
    lab = (ipaddress.ip_network("127.0.0.0/8"),)
    assert not is_bogon("127.0.1.1", lab)
    assert is_bogon("10.0.0.1", lab)


def test_clean_measurement_has_no_hints() -> None:
    observations = [dns(["45.76.9.9"])]
    handshakes = [
        tls("45.76.9.9", decoy=True, failure=None),
        tls("45.76.9.9", decoy=False, failure=None),
    ]
    assert compute_hints(observations, handshakes, ()) == []


def test_forged_and_duplicate_answers() -> None:
    # The injector's forged answer first, the real one late: the pawoo.net pattern.
    hints = compute_hints([dns(["8.7.198.45"], late=["45.76.1.2"])], [])
    assert hints == [Hint.DNS_FORGED_IP, Hint.DNS_DUPLICATE_ANSWERS]


def test_bogon_answer() -> None:
    assert compute_hints([dns(["127.0.0.1"])], []) == [Hint.DNS_BOGON]


def test_injection_sink_answer() -> None:
    sink = dns(["8.7.198.45"], sink=True)
    assert Hint.DNS_INJECTION in compute_hints([dns(["45.76.1.2"]), sink], [])
    silent_sink = dns([], sink=True)
    silent_sink.responses = 0
    assert compute_hints([dns(["45.76.1.2"]), silent_sink], []) == []


def test_sni_blocked_needs_the_decoy_to_work() -> None:
    ip = "45.76.1.2"
    for failure in (Failure.CONNECTION_RESET, Failure.GENERIC_TIMEOUT, Failure.EOF):
        sni_filtered = [tls(ip, decoy=True, failure=None), tls(ip, decoy=False, failure=failure)]
        assert compute_hints([dns([ip])], sni_filtered) == [Hint.TLS_SNI_BLOCKED]
    # Both fail: that is IP-level blocking (or an outage), not SNI filtering.
    both = [
        tls(ip, decoy=True, failure=Failure.CONNECTION_RESET),
        tls(ip, decoy=False, failure=Failure.CONNECTION_RESET),
    ]
    assert compute_hints([dns([ip])], both) == []
    # The second connect failed: no ClientHello with the name was ever sent.
    no_hello = [
        tls(ip, decoy=True, failure=None),
        tls(ip, decoy=False, failure=Failure.GENERIC_TIMEOUT, operation="connect"),
    ]
    assert compute_hints([dns([ip])], no_hello) == []


def test_mitm_on_certificate_errors_only() -> None:
    ip = "45.76.1.2"
    for failure in (Failure.SSL_UNKNOWN_AUTHORITY, Failure.SSL_INVALID_HOSTNAME):
        hints = compute_hints(
            [], [tls(ip, decoy=True, failure=None), tls(ip, decoy=False, failure=failure)]
        )
        assert hints == [Hint.TLS_MITM]
    expired = [tls(ip, decoy=False, failure=Failure.SSL_INVALID_CERTIFICATE)]
    assert compute_hints([], expired) == []


def test_compute_hints_does_not_mutate_inputs() -> None:
    observations = [dns(["8.7.198.45"], late=["45.76.1.2"])]
    before = [o.answers[:] + o.late_answers[:] for o in observations]
    compute_hints(observations, [])
    assert [o.answers + o.late_answers for o in observations] == before
