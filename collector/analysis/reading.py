"""Total reading of one measurement dict into typed, immutable views.

The analysis (``collector.analysis.verdict``) takes measurements as plain dicts of
the shape ``Measurement.to_dict()`` (docs/measurement-format.md): the probe's,
stored as signed JSON, and the control vantage's. This module is the one place
that turns such a dict into typed steps, and it never raises: a missing key or a
value of the wrong type is read as absent, so a malformed record can weaken a
verdict (towards ``unknown``) but never crash the collector or invent evidence.

Two choices follow from "absent, never evidence":

- a ``failure`` that is not a string nor null reads as ``MALFORMED_FAILURE``,
  a failure that matches no rule: read as null it would turn a garbled record
  into a success (an ``ok`` verdict nobody measured);
- a step without a valid IP address is dropped: it cannot be tied to an
  address, a trigger or a control answer. Addresses are compared in canonical
  form (``2001:DB8::1`` and ``2001:db8:0::1`` are one address).
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MALFORMED_FAILURE = "unknown_failure: malformed observation"
DEFAULT_PORT = 443


@dataclass(frozen=True, slots=True)
class DNSStep:
    query_type: str | None
    answers: tuple[str, ...]  # first then late answers, canonical, valid addresses only
    failure: str | None
    responses: int
    responses_agree: bool  # false only when the record says so
    injection_sink: bool


@dataclass(frozen=True, slots=True)
class Step:
    """A TCP connect, TLS handshake or HTTP round trip on one (ip, port)."""

    ip: str
    port: int
    failure: str | None
    failed_operation: str | None
    t0: float | None
    t: float | None


@dataclass(frozen=True, slots=True)
class TLSStep(Step):
    decoy: bool
    cert_valid: bool | None


@dataclass(frozen=True, slots=True)
class HTTPStep(Step):
    status_code: int | None
    mastodon: bool
    instance_domain: str | None


@dataclass(frozen=True, slots=True)
class Observed:
    scheme: str  # "https" or "http"
    started_at: datetime | None  # aware UTC
    dns: tuple[DNSStep, ...]
    tcp: tuple[Step, ...]
    tls: tuple[TLSStep, ...]
    http: tuple[HTTPStep, ...]

    def at(self, step: Step) -> datetime | None:
        """Wall-clock start of *step*: ``started_at`` + ``t0`` (``t`` when ``t0`` is absent)."""
        offset = step.t0 if step.t0 is not None else step.t
        return shift(self.started_at, offset)


def shift(start: datetime | None, seconds: float | None) -> datetime | None:
    if start is None or seconds is None:
        return None
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        return None


def canonical_ip(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return _canonical(value)


@functools.lru_cache(maxsize=16384)
def _canonical(text: str) -> str | None:
    # Cached: a detection pass reads the same few thousand addresses over and over.
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        return None


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp (``2026-11-21T10:00:00.123456Z``) as an aware UTC datetime."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is None:  # a naive stamp is UTC by the format's definition
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _entries(record: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = record.get(key)
    if not isinstance(value, list | tuple):
        return []
    return [entry for entry in value if isinstance(entry, Mapping)]


def _str(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _int(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _flag(record: Mapping[str, Any], key: str) -> bool | None:
    value = record.get(key)
    return value if isinstance(value, bool) else None


def _failure(record: Mapping[str, Any]) -> str | None:
    value = record.get("failure")
    if value is None or isinstance(value, str):
        return value
    return MALFORMED_FAILURE


def _addresses(record: Mapping[str, Any], *keys: str) -> tuple[str, ...]:
    found: list[str] = []
    for key in keys:
        values = record.get(key)
        if isinstance(values, list | tuple):
            found.extend(ip for ip in map(canonical_ip, values) if ip is not None)
    return tuple(found)


def _step_fields(entry: Mapping[str, Any], default_port: int) -> dict[str, Any] | None:
    ip = canonical_ip(entry.get("ip"))
    if ip is None:
        return None
    port = _int(entry, "port")
    return {
        "ip": ip,
        "port": port if port is not None else default_port,
        "failure": _failure(entry),
        "failed_operation": _str(entry, "failed_operation"),
        "t0": _seconds(entry, "t0"),
        "t": _seconds(entry, "t"),
    }


# A measurement as the analysis takes it: the dict, or the view ``read`` made of it
# (a caller that analyzes one record several times reads it once).
Record = Mapping[str, Any] | Observed


def read(record: Record) -> Observed:
    """The typed view of one measurement dict; never raises on malformed content."""
    if isinstance(record, Observed):
        return record
    if not isinstance(record, Mapping):
        record = {}
    scheme = "http" if _str(record, "scheme") == "http" else "https"
    port = _int(record, "port")
    default_port = port if port is not None else DEFAULT_PORT
    dns = tuple(
        DNSStep(
            query_type=_str(entry, "query_type"),
            answers=_addresses(entry, "answers", "late_answers"),
            failure=_failure(entry),
            responses=max(_int(entry, "responses") or 0, 0),
            responses_agree=_flag(entry, "responses_agree") is not False,
            injection_sink=_flag(entry, "injection_sink") is True,
        )
        for entry in _entries(record, "dns")
    )
    tcp: list[Step] = []
    tls: list[TLSStep] = []
    http: list[HTTPStep] = []
    for entry in _entries(record, "tcp"):
        fields = _step_fields(entry, default_port)
        if fields is not None:
            tcp.append(Step(**fields))
    for entry in _entries(record, "tls"):
        fields = _step_fields(entry, default_port)
        if fields is not None:
            tls.append(
                TLSStep(
                    **fields,
                    decoy=_flag(entry, "decoy") is True,
                    cert_valid=_flag(entry, "cert_valid"),
                )
            )
    for entry in _entries(record, "http"):
        fields = _step_fields(entry, default_port)
        if fields is not None:
            domain = _str(entry, "instance_domain")
            http.append(
                HTTPStep(
                    **fields,
                    status_code=_int(entry, "status_code"),
                    mastodon=_flag(entry, "mastodon") is True,
                    instance_domain=domain.strip().rstrip(".").lower() if domain else None,
                )
            )
    return Observed(
        scheme=scheme,
        started_at=parse_time(record.get("started_at")),
        dns=dns,
        tcp=tuple(tcp),
        tls=tuple(tls),
        http=tuple(http),
    )
