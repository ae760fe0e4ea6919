"""The words a measurement is written in, shared by the probe and the collector.

Where this sits in the data flow: the probe's primitives write these strings into
every observation (``measure.failures.classify`` picks the ``Failure``, each step
names its ``Operation``) and ``measure.hints.compute_hints`` adds ``Hint`` values;
the collector's analysis (``collector.analysis``) reads the very same strings back
from stored measurements. Both import them from here, so a renamed or added word
changes both sides at once. docs/measurement-format.md documents each set.

Failure strings are OONI's (ooni/spec data-formats/df-007-errors.md and
probe-cli's netxlite, which added the DNS, unreachable and TLS ones); anything
else is ``unknown_failure: <text>``.
"""

from __future__ import annotations

from enum import StrEnum


class Failure(StrEnum):
    """The closed set of failure strings the probe emits (besides ``unknown_failure``)."""

    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    CONNECTION_ABORTED = "connection_aborted"
    GENERIC_TIMEOUT = "generic_timeout_error"
    EOF = "eof_error"
    HOST_UNREACHABLE = "host_unreachable"
    NETWORK_UNREACHABLE = "network_unreachable"
    DNS_NXDOMAIN = "dns_nxdomain_error"
    DNS_NO_ANSWER = "dns_no_answer"
    DNS_REFUSED = "dns_refused_error"
    DNS_SERVFAIL = "dns_servfail_error"
    SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"
    SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"
    SSL_INVALID_CERTIFICATE = "ssl_invalid_certificate"
    SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"


UNKNOWN_FAILURE_PREFIX = "unknown_failure: "


class Operation(StrEnum):
    """The step that was under way when a failure happened (OONI's ``failed_operation``)."""

    RESOLVE = "resolve"
    CONNECT = "connect"
    TLS_HANDSHAKE = "tls_handshake"
    WRITE = "write"
    READ = "read"
    HTTP_TRANSACTION = "http_transaction"


class Hint(StrEnum):
    """Evidence of tampering a probe can see without a control (``measure.hints``)."""

    DNS_FORGED_IP = "dns_forged_ip"
    DNS_BOGON = "dns_bogon"
    DNS_DUPLICATE_ANSWERS = "dns_duplicate_answers"
    DNS_INJECTION = "dns_injection"
    TLS_SNI_BLOCKED = "tls_sni_blocked"
    TLS_MITM = "tls_mitm"


# Failures of the instance-SNI handshake that an SNI filter causes.
SNI_BLOCK_FAILURES = frozenset(
    {Failure.CONNECTION_RESET.value, Failure.GENERIC_TIMEOUT.value, Failure.EOF.value}
)
# Failures of the instance-SNI handshake that interception (or a misconfiguration) causes.
MITM_FAILURES = frozenset({Failure.SSL_UNKNOWN_AUTHORITY.value, Failure.SSL_INVALID_HOSTNAME.value})
