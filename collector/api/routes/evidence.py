"""Evidence anyone can verify: the collector's key, and each event's evidence bundle.

``GET /.well-known/blockwatch.json`` publishes the collector's key (public);
``GET /api/v1/events/{id}/evidence`` answers the bundle, to the admin in full,
to the domain's verified subscribers at once and to anyone after
``evidence_delay`` k-anonymously (collector.services.evidence; docs/evidence.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from collector.api.deps import ClockDep, SessionDep, SettingsDep, get_collector_key, require_admin
from collector.core.errors import Unauthorized
from collector.core.keys import CollectorKey
from collector.services.evidence import EvidenceService
from collector.services.evidence import well_known as well_known_json

router = APIRouter(tags=["evidence"])
well_known_router = APIRouter(tags=["evidence"])
well_known = well_known_router  # what app.py includes (no /api/v1 prefix)


class WellKnownOut(BaseModel):
    collector_key_id: str
    public_key: str
    key_algorithm: str
    evidence_format: str
    statement_format: str
    statement_prefix: str
    api_base: str
    evidence_path: str
    public_url: str | None
    publish_min_volunteers: int
    evidence_delay_seconds: float
    software: dict[str, str]
    well_known_path: str


class EvidenceMeasurementOut(BaseModel):
    id: str
    key_id: str
    public_key: str
    payload: str
    signature: str
    role: str
    cc: str
    asn: int
    region: str | None
    network_source: str


class OONIEvidenceMeasurementOut(BaseModel):
    """An OONI measurement: signed by no probe; OONI's public archive holds it."""

    id: str
    source: Literal["ooni"]
    key_id: str
    report_id: str
    measurement_uid: str | None
    payload: str
    role: str
    cc: str
    asn: int
    region: str | None
    network_source: str


class EvidenceBundleOut(BaseModel):
    format: str
    collector_key_id: str
    collector_public_key: str
    event_id: int
    audience: str
    withheld: int
    statement: str
    statement_signature: str
    measurements: list[EvidenceMeasurementOut | OONIEvidenceMeasurementOut]


def collector_key(request: Request) -> CollectorKey:
    key: CollectorKey = get_collector_key(request)
    return key


def _bearer(request: Request) -> str | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return presented.strip() or None


@well_known_router.get("/.well-known/blockwatch.json", response_model=WellKnownOut)
def well_known_document(request: Request, settings: SettingsDep) -> WellKnownOut:
    """The collector's public key and fingerprint, which evidence bundles are checked against."""
    return WellKnownOut.model_validate(well_known_json(settings, collector_key(request)))


@router.get(
    "/events/{event_id}/evidence",
    response_model=EvidenceBundleOut,
    responses={403: {"description": "not public yet (err_evidence_not_public)"}},
)
def event_evidence(
    event_id: Annotated[int, Path(ge=1, lt=2**31)],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> EvidenceBundleOut:
    """The event's evidence bundle (format blockwatch-evidence/1, docs/evidence.md)."""
    try:
        require_admin(request, settings)
        admin = True
    except Unauthorized:
        admin = False
    service = EvidenceService(settings, collector_key(request), clock)
    bundle = service.bundle(session, event_id, admin=admin, token=_bearer(request))
    return EvidenceBundleOut.model_validate(bundle)
