"""Reading block events and per-network status (what the detector wrote)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector.core.errors import NotFound, Unprocessable
from collector.core.models import EventRow, NetworkStateRow, TargetRow
from collector.detection.passes import event_json
from collector.services.targets import TargetService, normalize

STATES = ("open", "closed")


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def network_json(row: NetworkStateRow) -> dict[str, Any]:
    return {
        "cc": row.cc,
        "asn": row.asn,
        "state": row.state,
        "methods": json.loads(row.methods),
        "since": _iso(row.since),
        "probes": row.probes,
        "updated_at": _iso(row.updated_at),
    }


class EventService:
    def events(
        self,
        session: Session,
        *,
        domain: str | None = None,
        cc: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events, newest first, filtered; *before_id* pages back through them."""
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if domain:
            query = query.where(EventRow.domain == normalize(domain))
        if cc:
            if len(cc) != 2 or not cc.isalpha():
                raise Unprocessable("cc must be a two-letter country code", "err_invalid_cc")
            query = query.where(EventRow.cc == cc.upper())
        if state:
            if state not in STATES:
                raise Unprocessable(f"state must be one of {STATES}", "err_invalid_state")
            query = query.where(EventRow.state == state)
        if before_id is not None:
            query = query.where(EventRow.id < before_id)
        return [event_json(row) for row in session.scalars(query)]

    def event(self, session: Session, event_id: int) -> dict[str, Any]:
        row = session.get(EventRow, event_id)
        if row is None:
            raise NotFound(f"no event {event_id}")
        return event_json(row)

    def networks(self, session: Session, domain: str) -> list[dict[str, Any]]:
        rows = session.scalars(
            select(NetworkStateRow)
            .where(NetworkStateRow.domain == domain)
            .order_by(NetworkStateRow.cc, NetworkStateRow.asn)
        )
        return [network_json(row) for row in rows]

    def status(self, session: Session, domain: str) -> dict[str, Any]:
        """A domain's state in every measured network, and its group's mirrors'."""
        name = normalize(domain)
        target = session.scalar(select(TargetRow).where(TargetRow.domain == name))
        if target is None:
            raise NotFound(f"no target {name!r}", "err_unknown_target")
        group = TargetService().group_of(session, name)
        mirrors = [
            {"domain": t.domain, "kind": t.kind, "networks": self.networks(session, t.domain)}
            for t in sorted(group, key=lambda t: t.domain)
            if t.domain != name
        ]
        return {
            "domain": name,
            "group": target.group.name if target.group else None,
            "networks": self.networks(session, name),
            "events": self.events(session, domain=name, state="open"),
            "mirrors": mirrors,
        }
