"""Target routes: the list probes measure (public), and its changes (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from collector.api.deps import Admin, SessionDep
from collector.api.schemas import TargetList, TargetOut, TargetsIn
from collector.core.models import TargetRow
from collector.services.targets import TargetService

router = APIRouter(tags=["targets"])


def target_out(row: TargetRow) -> TargetOut:
    return TargetOut(domain=row.domain, group=row.group.name if row.group else None, kind=row.kind)


@router.get("/targets", response_model=TargetList)
def list_targets(session: SessionDep) -> TargetList:
    rows = TargetService().all(session)
    return TargetList(data=[target_out(r) for r in rows], count=len(rows))


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
