"""Failure normalization: type first, errno next, verification code, message last."""

from __future__ import annotations

import errno
import ssl

import dns.exception
import dns.message
import h11
import pytest

from probe_agent.measure.failures import (
    NETWORK_ERRORS,
    SCRUBBED,
    classify,
    dns_failure,
    is_unknown,
    scrub_ips,
)
from probe_agent.protocol.vocabulary import UNKNOWN_FAILURE_PREFIX, Failure, Operation


def _cert_error(code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = "x"
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Failure.CONNECTION_REFUSED),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Failure.CONNECTION_RESET),
        (BrokenPipeError(errno.EPIPE, "pipe"), Failure.CONNECTION_RESET),
        (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), Failure.CONNECTION_ABORTED),
        (TimeoutError(), Failure.GENERIC_TIMEOUT),
        (dns.exception.Timeout(), Failure.GENERIC_TIMEOUT),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Failure.HOST_UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Failure.NETWORK_UNREACHABLE),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), Failure.GENERIC_TIMEOUT),
        (EOFError(), Failure.EOF),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Failure.EOF),
        (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), Failure.EOF),
        (ssl.SSLError(1, "[SSL: TLSV1_ALERT_HANDSHAKE_FAILURE]"), Failure.SSL_FAILED_HANDSHAKE),
        (_cert_error(62), Failure.SSL_INVALID_HOSTNAME),
        (_cert_error(20), Failure.SSL_UNKNOWN_AUTHORITY),
        (_cert_error(18), Failure.SSL_UNKNOWN_AUTHORITY),
        (_cert_error(19), Failure.SSL_UNKNOWN_AUTHORITY),
        (_cert_error(10), Failure.SSL_INVALID_CERTIFICATE),
    ],
)
def test_known_exceptions_map_to_ooni_strings(exc: BaseException, expected: Failure) -> None:
    info = classify(exc, Operation.CONNECT)
    assert info.failure == expected.value
    assert info.operation is Operation.CONNECT


def test_errno_wins_over_message() -> None:
    # The message says "reset", the errno says unreachable: the errno is the fact.
    exc = OSError(errno.EHOSTUNREACH, "connection reset by gremlins")
    assert classify(exc, Operation.CONNECT).failure == Failure.HOST_UNREACHABLE.value


def test_message_is_the_last_resort() -> None:
    assert classify(OSError("Connection reset by peer"), Operation.READ).failure == (
        Failure.CONNECTION_RESET.value
    )


def test_unknown_failure_scrubs_addresses() -> None:
    exc = OSError(errno.EADDRNOTAVAIL, "cannot assign 192.0.2.7 or [2001:db8::1]:443")
    failure = classify(exc, Operation.CONNECT).failure
    assert failure.startswith(UNKNOWN_FAILURE_PREFIX)
    assert is_unknown(failure)
    assert "192.0.2.7" not in failure
    assert "2001:db8::1" not in failure
    assert SCRUBBED in failure


def test_malformed_dns_is_unknown_failure_not_crash() -> None:
    with pytest.raises(dns.message.ShortHeader) as caught:
        dns.message.from_wire(b"\x00\x01")
    failure = classify(caught.value, Operation.RESOLVE).failure
    assert failure.startswith(UNKNOWN_FAILURE_PREFIX + "malformed DNS message")
    assert isinstance(caught.value, NETWORK_ERRORS)


def test_malformed_http_is_unknown_failure() -> None:
    failure = classify(h11.RemoteProtocolError("bad status line"), Operation.HTTP_TRANSACTION)
    assert failure.failure.startswith(UNKNOWN_FAILURE_PREFIX + "malformed HTTP response")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect to 10.1.2.3 failed", f"connect to {SCRUBBED} failed"),
        ("peer [2001:db8::42]:443 gone", f"peer {SCRUBBED}:443 gone"),
        ("fe80::1%eth0 down", f"{SCRUBBED} down"),
        ("version 1.2.3 is fine", "version 1.2.3 is fine"),
        ("::1", SCRUBBED),
    ],
)
def test_scrub_ips(text: str, expected: str) -> None:
    assert scrub_ips(text) == expected


@pytest.mark.parametrize(
    ("rcode", "count", "expected"),
    [
        ("NOERROR", 1, None),
        ("NOERROR", 0, Failure.DNS_NO_ANSWER.value),
        ("NXDOMAIN", 0, Failure.DNS_NXDOMAIN.value),
        ("SERVFAIL", 0, Failure.DNS_SERVFAIL.value),
        ("REFUSED", 0, Failure.DNS_REFUSED.value),
        ("NOTIMP", 0, UNKNOWN_FAILURE_PREFIX + "dns rcode NOTIMP"),
    ],
)
def test_dns_failure_by_rcode(rcode: str, count: int, expected: str | None) -> None:
    assert dns_failure(rcode, count) == expected


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
def test_local_resource_errors_are_not_network_failures(code: int) -> None:
    from probe_agent.protocol.errors import LocalResourceError

    with pytest.raises(LocalResourceError):
        classify(OSError(code, "Too many open files: '/home/volunteer/x'"), Operation.CONNECT)


def test_paths_are_scrubbed() -> None:
    text = "cannot open '/home/volunteer/.venv/lib/dns/x.py' for 1.2.3.4"
    assert scrub_ips(text) == f"cannot open '{SCRUBBED}' for {SCRUBBED}"
    assert scrub_ips("https://example.com/a") == "https://example.com/a"
