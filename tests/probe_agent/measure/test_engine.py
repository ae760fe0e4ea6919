"""The engine's flows with fake DNS, fake dialer and an in-memory TLS server."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from probe_agent.measure.engine import DomainError, Engine, EngineConfig, Result, select_addresses
from probe_agent.measure.http import HTTPSettings
from probe_agent.measure.tls import TLSContexts
from probe_agent.protocol.inputs import Endpoint
from probe_agent.protocol.vocabulary import Failure, Hint
from tests.probe_agent.fakes import (
    FakeClock,
    FakeDialer,
    FakeDNSProber,
    ScriptedStream,
    TLSPeerStream,
    make_ca,
    mastodon_responder,
    server_context,
)

DOMAIN = "instance.test"
REAL_IP = "45.76.1.2"


@pytest.fixture
def contexts(tmp_path: Path) -> TLSContexts:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(make_ca((DOMAIN,)).ca_pem)
    return TLSContexts.create(str(ca_file))


def make_engine(
    dns: FakeDNSProber, dialer: FakeDialer, contexts: TLSContexts, **kw: object
) -> Engine:
    config = EngineConfig(
        resolvers=(Endpoint("192.0.2.53", 53),), timeout=1.0, http=HTTPSettings(timeout=1.0), **kw
    )  # type: ignore[arg-type]
    return Engine(
        config, dns_prober=dns, dialer=dialer, tls_contexts=contexts, clock_factory=FakeClock
    )


def healthy(tmp_path: Path) -> FakeDialer:
    ctx = server_context(make_ca((DOMAIN,)), tmp_path)
    return FakeDialer(lambda ip, n: TLSPeerStream(ctx, mastodon_responder(DOMAIN)))


async def test_successful_flow_and_step_order(tmp_path: Path, contexts: TLSContexts) -> None:
    dns = FakeDNSProber({"A": ([REAL_IP], [], None)})
    dialer = healthy(tmp_path)
    m = await make_engine(dns, dialer, contexts).measure(DOMAIN)
    # Each resolver: A and AAAA over UDP and TCP.
    assert sorted((t, q) for _, t, q, _ in dns.queries) == [
        ("tcp", "A"),
        ("tcp", "AAAA"),
        ("udp", "A"),
        ("udp", "AAAA"),
    ]
    assert [o.ip for o in m.tcp] == [REAL_IP]
    assert dialer.dials == [REAL_IP, REAL_IP]  # decoy connection, then the instance's
    decoy, real = m.tls
    assert decoy.decoy and decoy.sni == "example.com" and decoy.failure is None
    assert not real.decoy and real.sni == DOMAIN and real.cert_valid is True
    assert decoy.t <= real.t0  # the decoy goes first (residual blocking)
    assert real.certificate is not None and DOMAIN in real.certificate.sans
    assert m.http[0].mastodon and m.http[0].instance_domain == DOMAIN
    assert m.hints == []
    assert m.software["name"] == "blockwatch-probe"
    assert m.started_at.endswith("Z")


async def test_injected_dns_dials_the_real_address_only(
    tmp_path: Path, contexts: TLSContexts
) -> None:
    dns = FakeDNSProber({"A": (["8.7.198.45"], [REAL_IP], None)})
    dialer = healthy(tmp_path)
    m = await make_engine(dns, dialer, contexts).measure(DOMAIN)
    assert set(dialer.dials) == {REAL_IP}  # the forged address is evidence, not a target
    assert Hint.DNS_FORGED_IP in m.hints
    assert Hint.DNS_DUPLICATE_ANSWERS in m.hints


async def test_sni_reset_gives_hint(tmp_path: Path, contexts: TLSContexts) -> None:
    ctx = server_context(make_ca((DOMAIN,)), tmp_path)

    def factory(ip: str, n: int) -> object:
        if n == 1:  # the decoy's connection works
            return TLSPeerStream(ctx, mastodon_responder(DOMAIN))
        return ScriptedStream([ConnectionResetError(104, "Connection reset by peer")])

    m = await make_engine(
        FakeDNSProber({"A": ([REAL_IP], [], None)}), FakeDialer(factory), contexts
    ).measure(DOMAIN)
    decoy, real = m.tls
    assert decoy.failure is None
    assert real.failure == Failure.CONNECTION_RESET.value
    assert real.failed_operation == "tls_handshake"
    assert m.http == []
    assert m.hints == [Hint.TLS_SNI_BLOCKED]


async def test_connect_failures_are_data(contexts: TLSContexts) -> None:
    dns = FakeDNSProber({"A": ([REAL_IP, "45.76.1.3"], [], None)})
    dialer = FakeDialer(
        lambda ip, n: ConnectionRefusedError(111, "refused") if ip == REAL_IP else TimeoutError()
    )
    m = await make_engine(dns, dialer, contexts).measure(DOMAIN)
    failures = {o.ip: o.failure for o in m.tcp}
    assert failures == {
        REAL_IP: Failure.CONNECTION_REFUSED.value,
        "45.76.1.3": Failure.GENERIC_TIMEOUT.value,
    }
    assert m.tls == [] and m.http == []


async def test_second_connect_failure_is_recorded_on_tls(
    tmp_path: Path, contexts: TLSContexts
) -> None:
    ctx = server_context(make_ca((DOMAIN,)), tmp_path)

    def factory(ip: str, n: int) -> object:
        return TLSPeerStream(ctx, mastodon_responder(DOMAIN)) if n == 1 else ConnectionResetError()

    m = await make_engine(
        FakeDNSProber({"A": ([REAL_IP], [], None)}), FakeDialer(factory), contexts
    ).measure(DOMAIN)
    assert m.tls[1].failure == Failure.CONNECTION_RESET.value
    assert m.tls[1].failed_operation == "connect"


async def test_bogons_are_not_dialled(contexts: TLSContexts) -> None:
    dialer = FakeDialer(lambda ip, n: ConnectionRefusedError())
    dns = FakeDNSProber({"A": (["127.0.0.1", "10.0.0.1"], [], None)})
    m = await make_engine(dns, dialer, contexts).measure(DOMAIN)
    assert dialer.dials == []
    assert m.hints == [Hint.DNS_BOGON]


def test_select_addresses_order_cap_and_lab_networks() -> None:
    dns = FakeDNSProber({})
    clock = FakeClock()
    obs = asyncio.run(dns.query(Endpoint("192.0.2.53", 53), "udp", DOMAIN, "A", clock))
    obs.answers = ["45.76.1.1", "127.0.1.1", "45.76.1.1"]
    obs.late_answers = ["45.76.1.2"]
    assert select_addresses([obs], 8) == ["45.76.1.1", "45.76.1.2"]
    assert select_addresses([obs], 1) == ["45.76.1.1"]
    lab = (ipaddress.ip_network("127.0.0.0/8"),)
    assert select_addresses([obs], 8, lab) == ["45.76.1.1", "127.0.1.1", "45.76.1.2"]


async def test_measure_all_isolates_internal_errors(tmp_path: Path, contexts: TLSContexts) -> None:
    dns = FakeDNSProber({"A": ([REAL_IP], [], None)})
    engine = make_engine(dns, healthy(tmp_path), contexts)
    original = engine.measure

    async def flaky(domain: str, port: int | None = None):  # type: ignore[no-untyped-def]
        if domain.startswith("bad"):
            raise RuntimeError("a bug of ours")
        return await original(domain, port)

    engine.measure = flaky  # type: ignore[method-assign]
    results: list[Result] = []
    names = [f"ok{i}.test" for i in range(10)] + ["bad.test"]
    await engine.measure_all(names, 3, results.append)
    assert len(results) == 11
    errors = [r for r in results if isinstance(r, DomainError)]
    assert [e.domain for e in errors] == ["bad.test"]
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
