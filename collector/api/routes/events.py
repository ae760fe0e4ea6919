"""Block status and events: public, read-only (docs/api.md).

The answers go through the caller's ``Publication`` (collector/api/deps.py):
with the admin token in full; for anyone else k-anonymous, their times rounded
down to the measurement interval (collector/core/publication.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from collector.api.deps import PublicationDep, SessionDep
from collector.api.schemas import EventList, EventOut, StatusOut
from collector.services.events import EventService

router = APIRouter(tags=["events"])


@router.get("/status/{domain}", response_model=StatusOut)
def domain_status(domain: str, session: SessionDep, publication: PublicationDep) -> StatusOut:
    """The domain's current state per (country, ASN), its open events and its mirrors'."""
    return StatusOut.model_validate(EventService(publication).status(session, domain))


@router.get("/events", response_model=EventList)
def list_events(
    session: SessionDep,
    publication: PublicationDep,
    domain: Annotated[str | None, Query(max_length=253)] = None,
    cc: Annotated[str | None, Query(min_length=2, max_length=2)] = None,
    state: Literal["open", "closed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, lt=2**31)] = None,
) -> EventList:
    """Events, newest first; page back with ``before_id`` (the last id of a page)."""
    data = EventService(publication).events(
        session, domain=domain, cc=cc, state=state, limit=limit, before_id=before_id
    )
    return EventList.model_validate({"data": data, "count": len(data)})


@router.get("/events/{event_id}", response_model=EventOut)
def get_event(
    event_id: Annotated[int, Path(ge=1, lt=2**31)],
    session: SessionDep,
    publication: PublicationDep,
) -> EventOut:
    return EventOut.model_validate(EventService(publication).event(session, event_id))
