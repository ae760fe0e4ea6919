"""Target routes: the list probes measure (public), and its changes (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from collector.api.deps import Admin, SessionDep, SettingsDep
from collector.api.schemas import TargetList, TargetOut, TargetsIn
from collector.core.models import TargetRow
from collector.services import reachability
from collector.services.targets import COLLECTOR_KIND, TargetService

router = APIRouter(tags=["targets"])


def target_out(row: TargetRow, ports: dict[str, int] | None = None) -> TargetOut:
    """*ports*: the collector's own names and their ports (``reachability.ports``)."""
    return TargetOut(
        domain=row.domain,
        group=row.group.name if row.group else None,
        kind=row.kind,
        port=(ports or {}).get(row.domain) if row.kind == COLLECTOR_KIND else None,
    )


@router.get("/targets", response_model=TargetList)
def list_targets(session: SessionDep, settings: SettingsDep) -> TargetList:
    rows = TargetService().all(session)
    ports = reachability.ports(settings)
    return TargetList(data=[target_out(r, ports) for r in rows], count=len(rows))


@router.post("/targets", status_code=status.HTTP_201_CREATED, response_model=TargetList)
def add_targets(body: TargetsIn, _admin: Admin, session: SessionDep) -> TargetList:
    rows = TargetService().add(
        session, body.domains, group=body.group, kind=body.kind, source="api"
    )
    return TargetList(data=[target_out(r) for r in rows], count=len(rows))


@router.delete("/targets/{domain}", status_code=status.HTTP_204_NO_CONTENT)
def remove_target(domain: str, _admin: Admin, session: SessionDep) -> Response:
    TargetService().remove(session, domain)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
