"""Integration: TCP connect and the two TLS handshakes against real loopback servers.

Each server does one thing a network or a censor does after the ClientHello
(RST, silence, FIN, an SNI filter, a fatal alert) or presents a certificate the
probe must reject; the engine must name each one with the right failure and
hint, and measure the decoy SNI before the instance's name.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from probe_agent.measure.engine import DEFAULT_DECOY_SNI, Result
from probe_agent.measure.http import API_PATHS
from probe_agent.measure.observations import Measurement
from probe_agent.protocol.vocabulary import Failure, Hint, Operation
from tests.support.probing import assert_no_lingering_tasks, loopback_engine, tls_obs
from tests.support.simnet import STEP_TIMEOUT, SimInstance, SimulatedNetwork, free_tcp_port
from tests.support.tls_servers import WRONG_NAME, ServerBehaviour

pytestmark = [pytest.mark.integration, pytest.mark.timeout(15)]

DOMAIN = "social.example"
SLACK = 1.5


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


async def _measure(
    tmp_path: Path, behaviour: ServerBehaviour
) -> tuple[SimulatedNetwork, Measurement]:
    async with SimulatedNetwork(tmp_path, [SimInstance(DOMAIN, behaviour)]) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
    return net, m


def _leaf(net: SimulatedNetwork) -> tuple[bytes, x509.Certificate]:
    cert_path, _ = net.pki.cert_files([DOMAIN])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.public_bytes(Encoding.DER), cert


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_healthy_instance(tmp_path: Path) -> None:
    net, m = await _measure(tmp_path, ServerBehaviour.MASTODON)
    ip = net.ip_of(DOMAIN)
    assert [(o.ip, o.port, o.failure) for o in m.tcp] == [(ip, net.port, None)]
    decoy = tls_obs(m, decoy=True)
    assert (decoy.sni, decoy.failure, decoy.cert_valid) == (DEFAULT_DECOY_SNI, None, None)
    real = tls_obs(m, decoy=False)
    assert (real.sni, real.failure, real.cert_valid) == (DOMAIN, None, True)
    assert real.version is not None
    assert real.cipher is not None
    assert decoy.t <= real.t0  # the decoy goes first (docs/methodology.md, residual blocking)
    der, cert = _leaf(net)
    info = real.certificate
    assert info is not None
    assert info.subject == f"CN={DOMAIN}"
    assert info.issuer == net.pki.issuer_name("trusted")
    assert list(info.sans) == [DOMAIN]
    assert info.sha256 == hashlib.sha256(der).hexdigest()
    assert info.not_before == _iso(cert.not_valid_before_utc)
    assert info.not_after == _iso(cert.not_valid_after_utc)
    assert info.chain_length == 2  # the leaf and the test root it was verified against
    first = m.http[0]
    assert first.url == f"https://{DOMAIN}:{net.port}{API_PATHS[0]}"
    assert (first.status_code, first.failure, first.mastodon) == (200, None, True)
    assert first.instance_domain == DOMAIN
    assert len(m.http) == 1
    assert m.hints == []


async def test_closed_port_is_connection_refused(tmp_path: Path) -> None:
    net, m = await _measure(tmp_path, ServerBehaviour.CLOSED)
    assert [(o.ip, o.failure) for o in m.tcp] == [(net.ip_of(DOMAIN), Failure.CONNECTION_REFUSED)]
    assert m.tcp[0].failed_operation == Operation.CONNECT
    assert (m.tls, m.http) == ([], [])


async def test_reset_after_every_hello(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.RESET_AFTER_HELLO)
    for decoy in (True, False):
        obs = tls_obs(m, decoy=decoy)
        assert obs.failure == Failure.CONNECTION_RESET
        assert obs.failed_operation == Operation.TLS_HANDSHAKE
    # Both names reset: that is not SNI filtering.
    assert Hint.TLS_SNI_BLOCKED not in m.hints
    assert m.http == []


async def test_sni_filter_resets_only_the_instance_name(tmp_path: Path) -> None:
    async with SimulatedNetwork(tmp_path, [SimInstance(DOMAIN, ServerBehaviour.SNI_FILTER)]) as net:
        m = await loopback_engine(net.engine_config()).measure(DOMAIN)
        seen = list(net.server_of(DOMAIN).seen_sni)
    decoy = tls_obs(m, decoy=True)
    assert decoy.failure is None  # relayed to the healthy instance behind the filter
    assert decoy.certificate is not None
    assert list(decoy.certificate.sans) == [DOMAIN]
    real = tls_obs(m, decoy=False)
    assert real.failure == Failure.CONNECTION_RESET
    assert real.failed_operation == Operation.TLS_HANDSHAKE
    assert Hint.TLS_SNI_BLOCKED in m.hints
    # The filter saw the decoy first, then the instance's name (docs/methodology.md: order matters).
    assert seen == [DEFAULT_DECOY_SNI, DOMAIN]
    assert m.http == []


async def test_drop_after_hello_times_out(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.DROP_AFTER_HELLO)
    for decoy in (True, False):
        obs = tls_obs(m, decoy=decoy)
        assert obs.failure == Failure.GENERIC_TIMEOUT
        assert obs.failed_operation == Operation.TLS_HANDSHAKE
        assert STEP_TIMEOUT - 0.1 < obs.t - obs.t0 < STEP_TIMEOUT + SLACK
    assert Hint.TLS_SNI_BLOCKED not in m.hints
    assert m.runtime < 3 * STEP_TIMEOUT + SLACK  # DNS late wait + two handshake timeouts


async def test_fin_after_hello_is_eof(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.EOF_AFTER_HELLO)
    for decoy in (True, False):
        obs = tls_obs(m, decoy=decoy)
        assert obs.failure == Failure.EOF
        assert obs.failed_operation == Operation.TLS_HANDSHAKE
    assert Hint.TLS_SNI_BLOCKED not in m.hints


async def test_certificate_for_another_name(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.WRONG_NAME)
    assert tls_obs(m, decoy=True).failure is None  # the decoy does not validate
    real = tls_obs(m, decoy=False)
    assert (real.failure, real.cert_valid) == (Failure.SSL_INVALID_HOSTNAME, False)
    assert real.certificate is not None
    assert list(real.certificate.sans) == [WRONG_NAME]
    assert Hint.TLS_MITM in m.hints
    assert m.http == []


async def test_untrusted_authority_keeps_the_certificate(tmp_path: Path) -> None:
    net, m = await _measure(tmp_path, ServerBehaviour.UNTRUSTED_CA)
    real = tls_obs(m, decoy=False)
    assert (real.failure, real.cert_valid) == (Failure.SSL_UNKNOWN_AUTHORITY, False)
    assert real.failed_operation == Operation.TLS_HANDSHAKE
    # The interceptor's certificate is the evidence: it names the interceptor's CA.
    assert real.certificate is not None
    assert real.certificate.issuer == net.pki.issuer_name("untrusted")
    assert real.certificate.subject == f"CN={DOMAIN}"
    assert Hint.TLS_MITM in m.hints
    assert m.http == []


async def test_expired_certificate(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.EXPIRED)
    real = tls_obs(m, decoy=False)
    assert (real.failure, real.cert_valid) == (Failure.SSL_INVALID_CERTIFICATE, False)
    assert real.certificate is not None
    assert real.certificate.not_after < _iso(datetime.datetime.now(datetime.UTC))
    assert Hint.TLS_MITM not in m.hints  # a neglected instance, not an interception


async def test_huge_certificate_fails_the_handshake(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.HUGE_CERT)
    for decoy in (True, False):
        obs = tls_obs(m, decoy=decoy)
        assert obs.failure == Failure.SSL_FAILED_HANDSHAKE
        assert obs.failed_operation == Operation.TLS_HANDSHAKE
    assert m.http == []


async def test_fatal_alert_is_failed_handshake(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.NO_SHARED_CIPHER)
    for decoy in (True, False):
        obs = tls_obs(m, decoy=decoy)
        assert obs.failure == Failure.SSL_FAILED_HANDSHAKE
        assert obs.failed_operation == Operation.TLS_HANDSHAKE
        assert obs.certificate is None
    assert m.hints == []


async def test_address_going_dark_after_the_decoy_fails_at_connect(tmp_path: Path) -> None:
    _, m = await _measure(tmp_path, ServerBehaviour.BLACKHOLE_AFTER_FIRST)
    assert tls_obs(m, decoy=True).failure is None
    real = tls_obs(m, decoy=False)
    # The second connection's SYNs are dropped: no ClientHello with the name was sent,
    # so this is IP-level blocking (or residue), never SNI filtering.
    assert real.failure == Failure.GENERIC_TIMEOUT
    assert real.failed_operation == Operation.CONNECT
    assert Hint.TLS_SNI_BLOCKED not in m.hints


async def test_a_domain_with_its_own_port_is_measured_there(tmp_path: Path) -> None:
    """A collector served on its own port (check-in's ``port``) is measured at it; the
    other domains at the config's port (here one where nothing listens)."""
    async with SimulatedNetwork(
        tmp_path, [SimInstance(DOMAIN), SimInstance("other.example")]
    ) as net:
        engine = loopback_engine(net.engine_config(port=free_tcp_port(net.ip_of(DOMAIN))))
        results: list[Result] = []
        await engine.measure_all(
            [DOMAIN, "other.example"], 2, results.append, ports={DOMAIN: net.port}
        )
    by_domain = {r.domain: r for r in results if isinstance(r, Measurement)}
    own = by_domain[DOMAIN]
    assert own.port == net.port
    assert [(o.port, o.failure) for o in own.tcp] == [(net.port, None)]
    assert {o.port for o in own.tls} == {net.port} and tls_obs(own, decoy=False).failure is None
    assert own.http[0].url == f"https://{DOMAIN}:{net.port}{API_PATHS[0]}"
    other = by_domain["other.example"]
    assert other.port != net.port
    assert [o.failure for o in other.tcp] == ["connection_refused"]
