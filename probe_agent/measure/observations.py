"""Observation records: the flat, per-step output of the measurement engine.

One measurement of one domain is a list of DNS round trips, TCP connects, TLS
handshakes and HTTP round trips (CONTRIBUTING.md 2, after probe-cli's measurexlite), each
recorded whether the step worked or not, each with ``t0``/``t`` in seconds since
the measurement started (monotonic clock). ``Measurement.to_dict`` is the JSON
shape documented in docs/measurement-format.md and relied on by the collector.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from probe_agent.measure.failures import FailureInfo


@dataclass(slots=True)
class Step:
    """Common fields of every observation."""

    t0: float
    t: float
    failure: str | None = None
    failed_operation: str | None = None

    def fail(self, info: FailureInfo) -> None:
        self.failure = info.failure
        self.failed_operation = info.operation.value


@dataclass(slots=True, kw_only=True)
class DNSObservation(Step):
    resolver: str
    transport: str  # "udp" | "tcp"
    query_type: str  # "A" | "AAAA"
    rcode: str | None = None
    answers: list[str] = field(default_factory=list)
    cnames: list[str] = field(default_factory=list)
    # Addresses in responses that came after the first one (UDP only): an on-path
    # injector's forged answer arrives first, the real resolver's answer later.
    late_answers: list[str] = field(default_factory=list)
    responses: int = 0
    # Datagrams that were not a valid answer to our query (wrong id, garbage, flood).
    ignored: int = 0
    # True when every response carried the same answer set and rcode.
    responses_agree: bool = True
    queries_sent: int = 0
    # True for queries to an address that runs no resolver: any answer is injected.
    injection_sink: bool = False


@dataclass(slots=True, kw_only=True)
class TCPObservation(Step):
    ip: str
    port: int


@dataclass(slots=True, kw_only=True)
class CertificateInfo:
    subject: str
    issuer: str
    sans: tuple[str, ...]
    sha256: str
    not_before: str
    not_after: str
    chain_length: int


@dataclass(slots=True, kw_only=True)
class TLSObservation(Step):
    ip: str
    port: int
    sni: str
    # The decoy-SNI handshake (the SNI control): same address, a name nobody blocks.
    decoy: bool = False
    # True/False for the instance's SNI (validated against the trust store and the
    # name); None for the decoy, which is not validated.
    cert_valid: bool | None = None
    version: str | None = None
    cipher: str | None = None
    certificate: CertificateInfo | None = None


@dataclass(slots=True, kw_only=True)
class HTTPObservation(Step):
    url: str
    ip: str
    port: int
    status_code: int | None = None
    body_length: int = 0
    body_truncated: bool = False
    body_sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # True when the body is a fediverse instance's API answer (Mastodon API v2/v1 or
    # NodeInfo); ``instance_domain`` is the domain the answer claims to be.
    mastodon: bool = False
    instance_domain: str | None = None
    software: str | None = None


@dataclass(slots=True, kw_only=True)
class Measurement:
    measurement_id: str
    domain: str
    port: int
    scheme: str
    started_at: str
    software: dict[str, str]
    decoy_sni: str | None
    runtime: float = 0.0
    dns: list[DNSObservation] = field(default_factory=list)
    tcp: list[TCPObservation] = field(default_factory=list)
    tls: list[TLSObservation] = field(default_factory=list)
    http: list[HTTPObservation] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        result = _plain(self)
        assert isinstance(result, dict)
        return result


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass, in order; None for any other type."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls))


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """JSON-ready copy (``dataclasses.asdict`` deep-copies every leaf: 4x slower).

    Exact type checks first: nearly every value is a scalar, and this runs for
    every field of every result.
    """
    kind: type = type(value)
    if kind in _SCALARS:
        return value
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    names = _field_names(kind)
    if names is None:
        return value  # an enum member (a str) or another leaf
    return {name: _plain(getattr(value, name)) for name in names}
