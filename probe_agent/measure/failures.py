"""Failure normalization: the one place where exceptions become failure strings.

Every network primitive in the probe (DNS, TCP, TLS, HTTP) catches what the network
did to it and passes the exception here, together with the operation that was under
way. Out comes one of the ``Failure`` strings of ``probe_agent.protocol.vocabulary``
(OONI's) or ``unknown_failure: <text>`` with every IP address scrubbed, so that no
other module ever invents a failure string and no address leaks through an error
message.

Classification order (CONTRIBUTING.md 1): exception type first, then errno, then the
OpenSSL verification code, and the message text only as a last resort.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import ssl
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import h11

from probe_agent.protocol.errors import LocalResourceError
from probe_agent.protocol.vocabulary import UNKNOWN_FAILURE_PREFIX, Failure, Operation


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """A normalized failure: the string and the operation that produced it."""

    failure: str
    operation: Operation


_ERRNO_FAILURES: dict[int, Failure] = {
    errno.ECONNREFUSED: Failure.CONNECTION_REFUSED,
    errno.ECONNRESET: Failure.CONNECTION_RESET,
    errno.ECONNABORTED: Failure.CONNECTION_ABORTED,
    errno.ETIMEDOUT: Failure.GENERIC_TIMEOUT,
    errno.EHOSTUNREACH: Failure.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Failure.HOST_UNREACHABLE,
    errno.ENETUNREACH: Failure.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Failure.NETWORK_UNREACHABLE,
    # A write to a socket the peer already reset: the reset is what happened.
    errno.EPIPE: Failure.CONNECTION_RESET,
}

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) that mean "no trusted issuer".
_UNKNOWN_AUTHORITY_CODES = frozenset(
    {
        2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        27,  # X509_V_ERR_CERT_UNTRUSTED
    }
)
_HOSTNAME_MISMATCH_CODES = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_

_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
# Loose on purpose: anything with two or more colons between hex groups is treated
# as an IPv6 address, which may over-scrub a time like "12:30:45" (harmless).
_IPV6_BRACKETED_RE = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%\w+)?\]")
_IPV6_RE = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")
SCRUBBED = "[scrubbed]"
# File paths name the volunteer's home directory or user name.
_PATH_RE = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/]+/)*[^\s'\"/]*")


def scrub_ips(text: str) -> str:
    """Replace every IPv4 and IPv6 address, and every file path, with ``[scrubbed]``."""
    text = _PATH_RE.sub(SCRUBBED, text)
    text = _IPV4_RE.sub(SCRUBBED, text)
    text = _IPV6_BRACKETED_RE.sub(SCRUBBED, text)
    return _IPV6_RE.sub(SCRUBBED, text)


def _from_ssl(exc: ssl.SSLError) -> Failure | None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _HOSTNAME_MISMATCH_CODES:
            return Failure.SSL_INVALID_HOSTNAME
        if code in _UNKNOWN_AUTHORITY_CODES:
            return Failure.SSL_UNKNOWN_AUTHORITY
        return Failure.SSL_INVALID_CERTIFICATE
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Failure.EOF
    if isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError):
        return None
    # Alerts from the peer, protocol violations, unsupported versions: the handshake
    # itself failed, not the transport under it.
    return Failure.SSL_FAILED_HANDSHAKE


def _from_message(text: str) -> Failure | None:
    """Last resort: a few messages that some libraries raise without errno."""
    lowered = text.lower()
    if "connection reset" in lowered:
        return Failure.CONNECTION_RESET
    if "connection refused" in lowered:
        return Failure.CONNECTION_REFUSED
    if "timed out" in lowered:
        return Failure.GENERIC_TIMEOUT
    return None


# The probe's own machine ran short (descriptors, memory, buffers): not evidence
# about the network, so never a failure string (CONTRIBUTING.md 4).
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def classify(exc: BaseException, operation: Operation) -> FailureInfo:
    """Map *exc*, raised during *operation*, to a normalized failure.

    Programming errors (``TypeError``, ``AssertionError``...) are not network
    events; callers catch only the exceptions a network can cause (``OSError``,
    ``EOFError``, timeouts, DNS parse errors) and let the rest propagate. A local
    resource error (EMFILE: too many open files, ...) raises
    ``LocalResourceError``: the measurement is not made rather than made wrong.
    """
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        raise LocalResourceError(
            f"the probe's machine ran short during {operation.value}: {os.strerror(exc.errno)}"
        ) from exc
    return FailureInfo(_failure_string(exc), operation)


def _failure_string(exc: BaseException) -> str:
    found: Failure | None = None
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | dns.exception.Timeout):
        found = Failure.GENERIC_TIMEOUT
    elif isinstance(exc, ssl.SSLError):
        found = _from_ssl(exc)
    elif isinstance(exc, ConnectionRefusedError):
        found = Failure.CONNECTION_REFUSED
    elif isinstance(exc, ConnectionResetError | BrokenPipeError):
        found = Failure.CONNECTION_RESET
    elif isinstance(exc, ConnectionAbortedError):
        found = Failure.CONNECTION_ABORTED
    elif isinstance(exc, EOFError | asyncio.IncompleteReadError):
        found = Failure.EOF
    elif isinstance(exc, OSError) and exc.errno is not None:
        found = _ERRNO_FAILURES.get(exc.errno)
    if found is None and not isinstance(exc, (*_PARSE_ERRORS, h11.RemoteProtocolError)):
        found = _from_message(str(exc))
    if found is not None:
        return found.value
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, h11.RemoteProtocolError):
        detail = f"malformed HTTP response: {detail}"
    elif isinstance(exc, _PARSE_ERRORS):
        detail = f"malformed DNS message: {type(exc).__name__}"
    return UNKNOWN_FAILURE_PREFIX + scrub_ips(detail)[:200]


# Malformed or truncated DNS messages: a network event (someone sent garbage), not a bug.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    dns.message.ShortHeader,
    dns.message.TrailingJunk,
    dns.exception.FormError,
    dns.exception.SyntaxError,
    dns.name.BadLabelType,
    dns.name.BadPointer,
)

# What callers may catch around a network step: everything the network can cause.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    TimeoutError,
    dns.exception.DNSException,
    h11.RemoteProtocolError,
    *_PARSE_ERRORS,
)


def is_unknown(failure: str | None) -> bool:
    """True when *failure* is an ``unknown_failure: ...`` string."""
    return failure is not None and failure.startswith(UNKNOWN_FAILURE_PREFIX)


_RCODE_FAILURES = {
    "NXDOMAIN": Failure.DNS_NXDOMAIN,
    "SERVFAIL": Failure.DNS_SERVFAIL,
    "REFUSED": Failure.DNS_REFUSED,
}


def dns_failure(rcode: str, answer_count: int) -> str | None:
    """The failure of a parsed DNS response: by rcode, or ``dns_no_answer`` for empty NOERROR."""
    if rcode == "NOERROR":
        return None if answer_count else Failure.DNS_NO_ANSWER.value
    known = _RCODE_FAILURES.get(rcode)
    if known is not None:
        return known.value
    return f"{UNKNOWN_FAILURE_PREFIX}dns rcode {rcode}"
