"""Builders of small measurement dicts (the shape of ``Measurement.to_dict()``).

Every builder returns a fresh dict, so a case can be edited without touching
another. Addresses are labels only: nothing here is ever contacted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

DOMAIN = "alive.bar"
STARTED = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)
STARTED_TEXT = "2026-11-21T10:00:00.123456Z"

REAL_IP = "45.76.1.2"  # the instance, as the control resolves it (AS20473)
SIBLING_IP = "45.76.9.9"  # another address of the instance's AS, not in the control's answers
CDN_IP = "104.16.1.1"  # a CDN edge in another AS, serving the instance validly
OTHER_IP = "93.184.216.34"  # an unrelated host, ASN unknown
FORGED_IP = "8.7.198.45"  # in the forged-answer pool (OONI's CN poison list)
BOGON_IP = "10.10.34.34"  # a private address
ASNS = {REAL_IP: 20473, SIBLING_IP: 20473, CDN_IP: 13335}


_RCODES = {
    "dns_nxdomain_error": "NXDOMAIN",
    "dns_servfail_error": "SERVFAIL",
    "dns_refused_error": "REFUSED",
}


def asn_of(ip: str) -> int | None:
    return ASNS.get(ip)


def dns(
    *answers: str,
    query_type: str = "A",
    failure: str | None = None,
    late: tuple[str, ...] = (),
    responses: int | None = None,
    agree: bool = True,
    sink: bool = False,
    transport: str = "udp",
) -> dict[str, Any]:
    if failure is None and not answers:
        failure = "dns_no_answer"
    timed_out = failure == "generic_timeout_error"
    rcode = None if timed_out else _RCODES.get(failure or "", "NOERROR")
    if responses is None:
        responses = 0 if timed_out else 1 + bool(late)
    return {
        "resolver": "192.0.2.53:53" if sink else "10.0.0.53:53",
        "transport": transport,
        "query_type": query_type,
        "rcode": rcode,
        "answers": list(answers),
        "cnames": [],
        "late_answers": list(late),
        "responses": responses,
        "ignored": 0,
        "responses_agree": agree,
        "queries_sent": 1,
        "injection_sink": sink,
        "failure": failure,
        "failed_operation": "resolve" if failure else None,
        "t0": 0.0002,
        "t": 0.05,
    }


def tcp(ip: str = REAL_IP, failure: str | None = None, t0: float = 0.5) -> dict[str, Any]:
    return {
        "ip": ip,
        "port": 443,
        "failure": failure,
        "failed_operation": "connect" if failure else None,
        "t0": t0,
        "t": t0 + 0.05,
    }


def tls(
    ip: str = REAL_IP,
    *,
    decoy: bool,
    failure: str | None = None,
    cert_valid: bool | None = None,
    operation: str = "tls_handshake",
    t0: float = 0.6,
) -> dict[str, Any]:
    return {
        "ip": ip,
        "port": 443,
        "sni": "example.com" if decoy else DOMAIN,
        "decoy": decoy,
        "failure": failure,
        "failed_operation": operation if failure else None,
        "cert_valid": None if decoy else cert_valid,
        "version": None if failure else "TLSv1.3",
        "cipher": None if failure else "TLS_AES_256_GCM_SHA384",
        "certificate": None,
        "t0": t0,
        "t": t0 + 0.1,
    }


def handshakes(
    ip: str = REAL_IP,
    *,
    failure: str | None = None,
    cert_valid: bool | None = True,
    operation: str = "tls_handshake",
) -> list[dict[str, Any]]:
    """The decoy handshake (working), then the instance's."""
    if failure is not None and cert_valid is True:
        cert_valid = None
    return [
        tls(ip, decoy=True, t0=0.6),
        tls(ip, decoy=False, failure=failure, cert_valid=cert_valid, operation=operation, t0=0.8),
    ]


def http(
    ip: str = REAL_IP,
    *,
    mastodon: bool = True,
    status: int | None = 200,
    failure: str | None = None,
    domain: str | None = DOMAIN,
) -> dict[str, Any]:
    return {
        "url": f"https://{DOMAIN}/api/v2/instance",
        "ip": ip,
        "port": 443,
        "status_code": None if failure else status,
        "headers": {"content-type": "application/json"},
        "body_length": 1200,
        "body_truncated": False,
        "body_sha256": "0" * 64,
        "mastodon": mastodon and failure is None,
        "instance_domain": domain if mastodon and failure is None else None,
        "software": "mastodon" if mastodon and failure is None else None,
        "failure": failure,
        "failed_operation": "http_transaction" if failure else None,
        "t0": 1.0,
        "t": 1.2,
    }


def measurement(
    *,
    dns_steps: list[dict[str, Any]] | None = None,
    tcp_steps: list[dict[str, Any]] | None = None,
    tls_steps: list[dict[str, Any]] | None = None,
    http_steps: list[dict[str, Any]] | None = None,
    scheme: str = "https",
    started_at: str = STARTED_TEXT,
) -> dict[str, Any]:
    return {
        "measurement_id": "2934b234-0000-4000-8000-000000000001",
        "domain": DOMAIN,
        "port": 443 if scheme == "https" else 80,
        "scheme": scheme,
        "started_at": started_at,
        "runtime": 1.3,
        "software": {"name": "blockwatch-probe", "version": "0.1.0"},
        "decoy_sni": "example.com" if scheme == "https" else None,
        "dns": dns_steps if dns_steps is not None else [dns(REAL_IP)],
        "tcp": tcp_steps if tcp_steps is not None else [],
        "tls": tls_steps if tls_steps is not None else [],
        "http": http_steps if http_steps is not None else [],
        "hints": [],
    }


def reached(ip: str = REAL_IP, *, dns_steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A measurement that got the instance: answer, connect, valid TLS, API answer."""
    return measurement(
        dns_steps=dns_steps if dns_steps is not None else [dns(ip)],
        tcp_steps=[tcp(ip)],
        tls_steps=handshakes(ip),
        http_steps=[http(ip)],
    )


def control() -> dict[str, Any]:
    """The control vantage reaching the instance at its real address."""
    return reached(REAL_IP)


def failed_control(failure: str = "generic_timeout_error") -> dict[str, Any]:
    """The control resolves the instance but cannot connect (the instance is down)."""
    return measurement(dns_steps=[dns(REAL_IP)], tcp_steps=[tcp(REAL_IP, failure)])


def sni_blocked() -> dict[str, Any]:
    """A probe behind the GFW: a forged DNS answer (the real one late), then the TLS
    handshakes with the instance's name reset (the detection tests' usual block)."""
    return measurement(
        dns_steps=[dns(FORGED_IP, late=(REAL_IP,), agree=False)],
        tcp_steps=[tcp()],
        tls_steps=handshakes(failure="connection_reset"),
    )
