"""Probe routes: enrollment, check-in, key rotation, and their administration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collector.api.deps import (
    Admin,
    ClockDep,
    CollectorKeyDep,
    NetworkOfDep,
    SeenAddressDep,
    SessionDep,
    SettingsDep,
    SignedEndpointsDep,
)
from collector.api.routes.targets import target_out
from collector.api.schemas import (
    CheckinOut,
    EnrollOut,
    EnvelopeIn,
    NetworkOut,
    ProbeList,
    ProbeOut,
    RotateOut,
    TokenIn,
    TokenInfo,
    TokenList,
    TokenOut,
    VouchIn,
)
from collector.core import metrics
from collector.core.models import ProbeRow, TokenRow
from collector.services import reachability
from collector.services.probes import ProbeService, anchored
from collector.services.volunteers import volunteer_id, vouched_network
from probe_agent.protocol.envelope import b64encode

router = APIRouter(tags=["probes"])


def probe_out(probe: ProbeRow) -> ProbeOut:
    active = [k.key_id for k in probe.keys if k.status == "active"]
    vouched = vouched_network(probe, probe.token)
    declared = (probe.declared_cc, probe.declared_asn) if probe.declared_cc else None
    return ProbeOut(
        probe_id=probe.id,
        status=probe.status,
        role=probe.role,
        key_id=active[0] if active else None,
        cc=probe.last_cc,
        asn=probe.last_asn,
        network_source=probe.last_network_source,
        declared_cc=probe.declared_cc,
        declared_asn=probe.declared_asn,
        volunteer=volunteer_id(probe.id, probe.token_id),
        token_id=probe.token_id,
        vouched_cc=vouched[0] if vouched else None,
        vouched_asn=vouched[1] if vouched else None,
        region=probe.region,
        declared_vouched=declared is not None and declared == vouched,
        public_evidence=probe.public_evidence,
        created_at=probe.created_at,
        last_checkin_at=probe.last_checkin_at,
        software_version=probe.software_version,
        spool_depth=probe.spool_depth,
        evicted_total=probe.evicted_total,
    )


@router.post("/probes/enroll", status_code=status.HTTP_201_CREATED, response_model=EnrollOut)
def enroll(
    body: EnvelopeIn,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    collector_key: CollectorKeyDep,
) -> EnrollOut:
    probe, key, created = ProbeService(settings, clock).enroll(session, body.envelope())
    if not created:
        response.status_code = status.HTTP_200_OK
    metrics.ENROLLMENTS.labels(status=probe.status).inc()
    return EnrollOut(
        probe_id=probe.id,
        key_id=key.key_id,
        status=probe.status,
        role=probe.role,
        collector_key_id=collector_key.key_id,
        collector_public_key=b64encode(collector_key.public_key),
    )


@router.post("/probes/checkin", response_model=CheckinOut)
def checkin(
    body: EnvelopeIn,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    network_of: NetworkOfDep,
    seen_address: SeenAddressDep,
    endpoints: SignedEndpointsDep,
) -> CheckinOut:
    # The key's bucket is taken after its signature verified: junk naming a probe's key
    # cannot spend that probe's check-ins, nor a fresh key id buy a fresh bucket.
    probe, network, targets = ProbeService(settings, clock).checkin(
        session, body.envelope(), network_of, limit=request.app.state.rate_limiter.check
    )
    metrics.CHECKINS.labels(role=probe.role).inc()
    own_ports = reachability.ports(settings)
    return CheckinOut(
        probe_id=probe.id,
        status=probe.status,
        server_time=clock.now(),
        interval_seconds=settings.measure_interval,
        retest_spacing_seconds=settings.retest_spacing,
        network=NetworkOut(
            cc=network.cc,
            asn=network.asn,
            source=str(network.source),
            region=network.region,
            region_source=network.region_source,
        ),
        targets=[target_out(t, own_ports) for t in targets],  # own: the collector's names
        seen_address=seen_address,
        endpoints=endpoints,
        decoys=[n for n in settings.decoy_snis.split(",") if n],
    )


@router.post("/probes/rotate", response_model=RotateOut)
def rotate(
    body: EnvelopeIn, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> RotateOut:
    probe, key = ProbeService(settings, clock).rotate(session, body.envelope())
    return RotateOut(probe_id=probe.id, key_id=key.key_id, status=probe.status)


@router.post("/probes/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenOut)
def create_token(
    body: TokenIn,
    _admin: Admin,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    collector_key: CollectorKeyDep,
) -> TokenOut:
    token, row = ProbeService(settings, clock).create_token(
        session, uses=body.uses, expires_in=body.expires_in, role=body.role, note=body.note,
        cc=body.cc, asn=body.asn, region=body.region,
    )  # fmt: skip
    return TokenOut(
        token=token, anchored_token=anchored(token, collector_key.key_id), uses=row.max_uses,
        expires_at=row.expires_at, role=row.role, token_id=row.id, cc=row.vouched_cc,
        asn=row.vouched_asn, region=row.region,
    )  # fmt: skip


def token_info(row: TokenRow, probes: int) -> TokenInfo:
    return TokenInfo(
        token_id=row.id, role=row.role, uses=row.uses, max_uses=row.max_uses,
        expires_at=row.expires_at, created_at=row.created_at, revoked_at=row.revoked_at,
        note=row.note, cc=row.vouched_cc, asn=row.vouched_asn, region=row.region, probes=probes,
    )  # fmt: skip


def token_infos(session: Session, service: ProbeService) -> list[TokenInfo]:
    counts = {
        token_id: count
        for token_id, count in session.execute(
            select(ProbeRow.token_id, func.count()).group_by(ProbeRow.token_id)
        )
    }
    return [token_info(row, counts.get(row.id, 0)) for row in service.tokens(session)]


@router.get("/probes/tokens", response_model=TokenList)
def list_tokens(
    _admin: Admin, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> TokenList:
    tokens = token_infos(session, ProbeService(settings, clock))
    return TokenList(data=tokens, count=len(tokens))


@router.post("/probes/tokens/{token_id}/revoke", response_model=TokenInfo)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, lt=2**63)],
    _admin: Admin,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> TokenInfo:
    row = ProbeService(settings, clock).revoke_token(session, token_id)
    probes = session.scalar(select(func.count()).where(ProbeRow.token_id == row.id)) or 0
    return token_info(row, probes)


@router.get("/probes", response_model=ProbeList)
def list_probes(
    _admin: Admin, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> ProbeList:
    probes = [probe_out(p) for p in ProbeService(settings, clock).all(session)]
    return ProbeList(data=probes, count=len(probes))


@router.post("/probes/{probe_id}/approve", response_model=ProbeOut)
def approve(
    probe_id: str, _admin: Admin, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> ProbeOut:
    return probe_out(ProbeService(settings, clock).approve(session, probe_id))


@router.post("/probes/{probe_id}/revoke", response_model=ProbeOut)
def revoke(
    probe_id: str, _admin: Admin, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> ProbeOut:
    return probe_out(ProbeService(settings, clock).revoke(session, probe_id))


@router.post("/probes/{probe_id}/vouch", response_model=ProbeOut)
def vouch(
    probe_id: str,
    body: VouchIn,
    _admin: Admin,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> ProbeOut:
    service = ProbeService(settings, clock)
    return probe_out(service.vouch(session, probe_id, body.cc, body.asn, body.region))
