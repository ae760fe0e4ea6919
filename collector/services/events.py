"""Block events and per-network status as the API shows them (what the detector wrote).

The event document (``event_json``) is defined here, once: ``GET /api/v1/events``
answers it, and the detection pass stores it as each event change's snapshot,
which the outbox sends to subscribers (docs/api.md). The documents are whole
here; an ``EventService`` answers them through its ``Publication``
(collector/core/publication.py): ``FULL`` for the admin and the operator's
CLI, the k-anonymous, rounded one for everyone else.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector.core.errors import NotFound, Unprocessable
from collector.core.models import EventRow, NetworkStateRow, TargetRow
from collector.core.publication import Publication
from collector.services.ooni import OONI_VOLUNTEER
from collector.services.targets import TargetService, normalize

STATES = ("open", "closed")


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _iso_or_none(value: datetime | None) -> str | None:
    return _iso(value) if value is not None else None


def json_list(text: str | None) -> list[Any]:
    """A JSON list column (asns, methods, volunteers, evidence): empty when unset."""
    value = json.loads(text) if text else []
    return value if isinstance(value, list) else []


def evidence_bundle_url(event_id: int, public_url: str = "") -> str:
    """Where the event's evidence bundle is (docs/evidence.md); a path without *public_url*."""
    return f"{public_url.rstrip('/')}/api/v1/events/{event_id}/evidence"


def event_json(row: EventRow, public_url: str = "") -> dict[str, Any]:
    """An event as ``GET /api/v1/events`` shows it (docs/api.md); its evidence bundle's
    URL is absolute when the collector's *public_url* is given."""
    return {
        "id": row.id,
        "domain": row.domain,
        "cc": row.cc,
        "asns": json_list(row.asns),
        "methods": json_list(row.methods),
        "scope": row.scope,
        "state": row.state,
        "started_at": _iso_or_none(row.started_at),
        "detected_at": _iso_or_none(row.detected_at),
        "updated_at": _iso_or_none(row.updated_at),
        "ended_at": _iso_or_none(row.ended_at),
        "closed_at": _iso_or_none(row.closed_at),
        "probes": volunteer_count(json_list(row.volunteers)),
        "reporting_probes": row.reporting_probes,
        "volume_collapse_at": _iso_or_none(row.volume_collapse_at),
        "history": row.history,  # opened by replaying imported history, not live
        "evidence": json_list(row.evidence),
        "revision": row.revision,
        "rule_version": row.rule_version,
        "forged_pool_version": row.forged_pool_version,
        "evidence_bundle_url": evidence_bundle_url(row.id, public_url),
    }


def volunteer_count(volunteers: list[Any]) -> int:
    """The volunteers who saw an event, OONI (one volunteer a network) counted once."""
    names = {str(v) for v in volunteers}
    ooni = {v for v in names if v.startswith(OONI_VOLUNTEER)}
    return len(names - ooni) + bool(ooni)


def network_json(row: NetworkStateRow) -> dict[str, Any]:
    return {
        "cc": row.cc,
        "asn": row.asn,
        "state": row.state,
        "methods": json.loads(row.methods),
        "since": _iso(row.since),
        "probes": row.probes,
        "ooni": row.ooni,  # OONI's measurements vote here too (not counted in probes)
        "updated_at": _iso(row.updated_at),
    }


class EventService:
    """Events and status as *publication* lets them show (no default: each door chooses)."""

    def __init__(self, publication: Publication) -> None:
        self.publication = publication

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
        rows = [event_json(row) for row in session.scalars(query)]
        return self.publication.events(session, rows)

    def event(self, session: Session, event_id: int) -> dict[str, Any]:
        row = session.get(EventRow, event_id)
        if row is None:
            raise NotFound(f"no event {event_id}")
        [event] = self.publication.events(session, [event_json(row)])
        return event

    def networks(self, session: Session, domain: str) -> list[dict[str, Any]]:
        rows = session.scalars(
            select(NetworkStateRow)
            .where(NetworkStateRow.domain == domain)
            .order_by(NetworkStateRow.cc, NetworkStateRow.asn)
        )
        return self.publication.networks([network_json(row) for row in rows])

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
