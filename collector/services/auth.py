"""Authentication of signed envelopes: the first step of every probe request.

Between the wire and the services that act on a document (ingest, enrollment,
check-in, rotation): an envelope is decoded (``envelope_from``), its signature
checked over the exact payload bytes (``check_signature``), only then is the
document parsed (``parse_document``), its time checked (``check_window``) and
the signing key's standing (``key_usable``). Each step raises the
``CollectorError`` whose code the API answers; the envelope's own errors are
translated here, at this one boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from collector.core.errors import ENVELOPE_ERRORS, Forbidden, Unauthorized, Unprocessable
from collector.core.models import ProbeKeyRow, ProbeRow
from collector.core.settings import CollectorSettings
from collector.services.documents import SignedDocument
from probe_agent.protocol.envelope import Envelope, EnvelopeError, Purpose, verify

Doc = TypeVar("Doc", bound=BaseModel)
Signed = TypeVar("Signed", bound=SignedDocument)


@dataclass(frozen=True)
class Authenticated:
    """Who signed a document: the probe, the key, and when it says it signed."""

    probe: ProbeRow
    key: ProbeKeyRow
    signed_at: datetime


def envelope_from(data: Any) -> Envelope:
    """The envelope in *data* (its wire form), decoded."""
    try:
        return Envelope.from_json(data)
    except EnvelopeError as exc:
        raise ENVELOPE_ERRORS[exc.code](str(exc), exc.code) from exc


def check_signature(envelope: Envelope, purpose: Purpose, public_key: bytes) -> None:
    try:
        verify(envelope, purpose, public_key)
    except EnvelopeError as exc:
        raise ENVELOPE_ERRORS[exc.code](str(exc), exc.code) from exc


def parse_document(envelope: Envelope, model: type[Doc]) -> Doc:
    """The signed payload as *model* (call only after ``check_signature``)."""
    try:
        return model.model_validate_json(envelope.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        code = "err_invalid_domain" if where.endswith("domain") else "err_malformed_payload"
        raise Unprocessable(f"payload {where}: {first.get('msg')}", code) from exc


def max_age(purpose: Purpose, settings: CollectorSettings) -> float:
    """How old a document of *purpose* may be: a measurement waits in the spool for
    days; a check-in, enrollment or rotation is sent when it is signed."""
    return settings.max_age if purpose is Purpose.MEASUREMENT else settings.max_request_age


def check_window(
    doc: SignedDocument, settings: CollectorSettings, now: datetime, oldest: float | None = None
) -> None:
    if doc.signed_at > now + timedelta(seconds=settings.max_future_skew):
        raise Unprocessable("signed_at is in the future", "err_timestamp_out_of_window")
    age = settings.max_age if oldest is None else oldest
    if doc.signed_at < now - timedelta(seconds=age):
        raise Unprocessable("signed_at is too old", "err_timestamp_out_of_window")


def key_usable(
    probe: ProbeRow, key: ProbeKeyRow, signed_at: datetime, now: datetime, grace: float
) -> None:
    """Raise unless this key may sign a document dated *signed_at*, received *now*.

    A retired key's documents are accepted only when they say they were signed
    before the rotation AND arrive within *grace* of it: a stolen old key cannot
    backdate new measurements for ever.
    """
    if probe.status == "revoked" or key.status == "revoked":
        raise Forbidden("this probe's key is revoked", "err_revoked_key")
    if key.status == "retired" and (
        key.retired_at is None
        or signed_at >= key.retired_at
        or now > key.retired_at + timedelta(seconds=grace)
    ):
        raise Forbidden("this key was retired by a rotation", "err_revoked_key")
    if probe.status == "pending":
        raise Forbidden("the probe waits for approval", "err_probe_pending")


def authenticate(
    envelope: Envelope,
    key: ProbeKeyRow | None,
    purpose: Purpose,
    model: type[Signed],
    settings: CollectorSettings,
    now: datetime,
) -> tuple[Authenticated, Signed]:
    """Every check, in order, of an envelope signed by *key* (None: no probe has it)."""
    if key is None:
        raise Unauthorized("no probe has this key", "err_unknown_key")
    check_signature(envelope, purpose, key.public_key)
    doc = parse_document(envelope, model)
    check_window(doc, settings, now, max_age(purpose, settings))
    key_usable(key.probe, key, doc.signed_at, now, settings.retired_key_grace)
    return Authenticated(key.probe, key, doc.signed_at), doc
