"""Integration: the engine's DNS step against a real loopback resolver and injector.

Every failure here comes from a real socket event: an rcode on the wire, a
datagram that never comes, a forged answer racing the real one, garbage bytes,
an ICMP port unreachable from a closed port, an injector at an injection sink.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probe_agent.protocol.inputs import parse_endpoint
from probe_agent.protocol.vocabulary import UNKNOWN_FAILURE_PREFIX, Failure, Hint, Operation
from tests.support.dns_server import FORGED_A, FORGED_AAAA, DNSBehaviour, InjectorServer
from tests.support.probing import (
    assert_no_lingering_tasks,
    dialled,
    dns_obs,
    loopback_engine,
)
from tests.support.simnet import STEP_TIMEOUT, SimInstance, SimulatedNetwork

pytestmark = [pytest.mark.integration, pytest.mark.timeout(15)]

DOMAIN = "social.example"
MALFORMED_DNS = f"{UNKNOWN_FAILURE_PREFIX}malformed DNS message"
# Generous bound for one measurement whose every step may use its whole timeout.
SLACK = 1.5


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


def _net(tmp_path: Path, dns: DNSBehaviour = DNSBehaviour.ANSWER) -> SimulatedNetwork:
    return SimulatedNetwork(tmp_path, [SimInstance(DOMAIN, dns=dns)])


def _closed_port(ip: str) -> int:
    """A port on *ip* where neither TCP nor UDP listens (taken and released at once)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind((ip, 0))
        port: int = tcp.getsockname()[1]
        udp.bind((ip, port))
        return port


async def test_answer_on_udp_and_tcp(tmp_path: Path) -> None:
    async with _net(tmp_path) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    ip = net.ip_of(DOMAIN)
    for transport in ("udp", "tcp"):
        a = dns_obs(m, transport, "A")
        assert (a.failure, a.rcode, a.answers, a.late_answers) == (None, "NOERROR", [ip], [])
        assert a.responses == 1
        assert a.responses_agree
        assert a.resolver == net.resolver
        aaaa = dns_obs(m, transport, "AAAA")
        assert aaaa.failure == Failure.DNS_NO_ANSWER
        assert aaaa.failed_operation == Operation.RESOLVE
        assert aaaa.answers == []
    assert m.hints == []


@pytest.mark.parametrize(
    ("behaviour", "failure", "rcode"),
    [
        (DNSBehaviour.NXDOMAIN, Failure.DNS_NXDOMAIN, "NXDOMAIN"),
        (DNSBehaviour.SERVFAIL, Failure.DNS_SERVFAIL, "SERVFAIL"),
        (DNSBehaviour.REFUSED, Failure.DNS_REFUSED, "REFUSED"),
    ],
)
async def test_error_rcodes(
    tmp_path: Path, behaviour: DNSBehaviour, failure: Failure, rcode: str
) -> None:
    async with _net(tmp_path, behaviour) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    assert len(m.dns) == 4
    for obs in m.dns:
        assert (obs.failure, obs.rcode, obs.answers) == (failure, rcode, [])
    assert (m.tcp, m.tls, m.http) == ([], [], [])


async def test_rcode_without_a_failure_string_is_unknown_failure(tmp_path: Path) -> None:
    async with _net(tmp_path, DNSBehaviour.NOTIMP) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    for obs in m.dns:
        assert obs.rcode == "NOTIMP"
        assert obs.failure is not None
        assert obs.failure.startswith(UNKNOWN_FAILURE_PREFIX)
        assert "NOTIMP" in obs.failure
    assert m.tcp == []


async def test_unknown_name_is_nxdomain(tmp_path: Path) -> None:
    async with _net(tmp_path) as net:
        m = await loopback_engine(net.engine_config()).measure("unknown.example")
    assert {obs.failure for obs in m.dns} == {Failure.DNS_NXDOMAIN}


async def test_silent_resolver_times_out_within_the_timeout(tmp_path: Path) -> None:
    async with _net(tmp_path, DNSBehaviour.SILENT) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    for obs in m.dns:
        assert obs.failure == Failure.GENERIC_TIMEOUT
        assert obs.failed_operation == Operation.RESOLVE
        assert obs.responses == 0
        assert obs.t - obs.t0 < STEP_TIMEOUT + SLACK
    # retransmit_after=1 s within a 2 s timeout: the query went out twice.
    assert dns_obs(m, "udp", "A").queries_sent == 2
    assert m.runtime < STEP_TIMEOUT + SLACK
    assert m.tcp == []


async def test_injection_races_the_real_answer(tmp_path: Path) -> None:
    async with _net(tmp_path, DNSBehaviour.INJECT) as net:
        engine = loopback_engine(net.engine_config())
        m = await engine.measure(DOMAIN)
    ip = net.ip_of(DOMAIN)
    udp_a = dns_obs(m, "udp", "A")
    assert udp_a.answers == [FORGED_A]  # the injector's answer arrives first
    assert udp_a.late_answers == [ip]  # the real resolver's, 0.1 s later
    assert udp_a.responses == 2
    assert not udp_a.responses_agree
    udp_aaaa = dns_obs(m, "udp", "AAAA")
    assert udp_aaaa.answers == [FORGED_AAAA]
    assert not udp_aaaa.responses_agree
    # Injection is on UDP only: TCP gets the real answer.
    assert dns_obs(m, "tcp", "A").answers == [ip]
    assert Hint.DNS_DUPLICATE_ANSWERS in m.hints
    assert Hint.DNS_FORGED_IP in m.hints
    assert Hint.DNS_INJECTION not in m.hints  # no injection sink was configured
    # The real address is measured; the forged one is never dialled.
    assert [(o.ip, o.failure) for o in m.tcp] == [(ip, None)]
    assert {addr for addr, port in dialled(engine) if port == net.port} == {ip}
    assert m.http[0].mastodon


@pytest.mark.parametrize("behaviour", [DNSBehaviour.MALFORMED, DNSBehaviour.TRUNCATED])
async def test_garbage_is_an_unknown_failure_not_a_crash(
    tmp_path: Path, behaviour: DNSBehaviour
) -> None:
    async with _net(tmp_path, behaviour) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    assert len(m.dns) == 4
    for obs in m.dns:
        assert obs.failure is not None
        assert obs.failure.startswith(MALFORMED_DNS), obs.failure
        assert obs.failed_operation == Operation.RESOLVE
        assert obs.answers == []
    assert m.tcp == []


async def test_wrong_id_answer_is_ignored(tmp_path: Path) -> None:
    async with _net(tmp_path, DNSBehaviour.WRONG_ID) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    for qtype in ("A", "AAAA"):
        udp = dns_obs(m, "udp", qtype)
        assert udp.failure == Failure.GENERIC_TIMEOUT
        assert udp.responses == 0  # the datagram is not an answer to our query
        assert udp.answers == []
        # Over TCP dnspython refuses the mismatched response (BadResponse).
        tcp = dns_obs(m, "tcp", qtype)
        assert tcp.failure is not None
        assert tcp.failure.startswith(UNKNOWN_FAILURE_PREFIX)
    assert m.tcp == []


async def test_wrong_id_datagram_does_not_end_the_wait_for_the_real_answer(
    tmp_path: Path,
) -> None:
    async with _net(tmp_path, DNSBehaviour.WRONG_ID_THEN_ANSWER) as net:
        net.dns.records[DOMAIN].inject_delay = 1.0  # after late_wait (0.5 s), within 2 s
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    udp_a = dns_obs(m, "udp", "A")
    assert (udp_a.failure, udp_a.answers) == (None, [net.ip_of(DOMAIN)])


async def test_resolver_on_closed_port_is_connection_refused(tmp_path: Path) -> None:
    async with _net(tmp_path) as net:
        closed = parse_endpoint(f"127.0.0.1:{_closed_port('127.0.0.1')}")
        m = await loopback_engine(net.engine_config(resolvers=(closed,))).measure(DOMAIN)
    assert len(m.dns) == 4
    for obs in m.dns:
        # UDP: the ICMP port unreachable; TCP: the RST answering our SYN.
        assert obs.failure == Failure.CONNECTION_REFUSED, (obs.transport, obs.failure)
        assert obs.failed_operation == Operation.RESOLVE
    assert m.tcp == []


async def test_injection_sink_that_answers_is_injection(tmp_path: Path) -> None:
    async with _net(tmp_path) as net, InjectorServer("127.0.0.2") as injector:
        sink = parse_endpoint(injector.endpoint)
        engine = loopback_engine(net.engine_config(injection_sinks=(sink,)))
        m = await engine.measure(DOMAIN)
    sink_a = dns_obs(m, "udp", "A", sink=True)
    assert sink_a.resolver == injector.endpoint
    assert sink_a.responses == 1
    assert sink_a.answers == [FORGED_A]
    assert injector.queries == 2  # A and AAAA, UDP only
    assert Hint.DNS_INJECTION in m.hints
    assert Hint.DNS_FORGED_IP in m.hints
    # Answers from a sink are evidence, never addresses to dial.
    assert {a for a, port in dialled(engine) if port == net.port} == {net.ip_of(DOMAIN)}


async def test_injection_sink_with_nothing_listening_is_no_injection(tmp_path: Path) -> None:
    async with _net(tmp_path) as net:
        sink = parse_endpoint(f"127.0.0.3:{_closed_port('127.0.0.3')}")
        m = await loopback_engine(net.engine_config(injection_sinks=(sink,))).measure(DOMAIN)
    for qtype in ("A", "AAAA"):
        obs = dns_obs(m, "udp", qtype, sink=True)
        assert obs.responses == 0
        assert obs.failure == Failure.CONNECTION_REFUSED
    assert Hint.DNS_INJECTION not in m.hints
    assert m.hints == []
    assert m.http[0].mastodon
