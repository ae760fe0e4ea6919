"""Targets: the instance domains probes measure, grouped with their mirrors and aliases.

A group is an instance: its primary domain plus the mirrors and alias domains
its admins run so that users can route around a block. Domains are normalized
(IDNA 2008) before they are stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from collector.core.errors import NotFound, Unprocessable
from collector.core.models import TargetGroupRow, TargetRow
from probe_agent.protocol.errors import InvalidDomainError
from probe_agent.protocol.inputs import normalize_domain

COLLECTOR_KIND = "collector"  # the collector's own names (collector/services/reachability.py)
KINDS = ("primary", "mirror", "alias", COLLECTOR_KIND)


def normalize(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except InvalidDomainError as exc:
        raise Unprocessable(str(exc), "err_invalid_domain") from exc


class TargetService:
    def _group(self, session: Session, name: str | None) -> TargetGroupRow | None:
        if name is None:
            return None
        group = session.scalar(select(TargetGroupRow).where(TargetGroupRow.name == name))
        if group is None:
            group = TargetGroupRow(name=name)
            session.add(group)
            session.flush()
        return group

    def add(
        self,
        session: Session,
        domains: Iterable[str],
        *,
        group: str | None = None,
        kind: str = "primary",
        source: str | None = None,
    ) -> list[TargetRow]:
        """Add (or update the group and kind of) each domain; all or nothing."""
        if kind not in KINDS:
            raise Unprocessable(f"kind must be one of {KINDS}")
        names = list(dict.fromkeys(normalize(d) for d in domains))
        group_row = self._group(session, group)
        existing = {
            t.domain: t
            for t in session.scalars(select(TargetRow).where(TargetRow.domain.in_(names)))
        }
        rows = []
        for name in names:
            row = existing.get(name)
            if row is None:
                row = TargetRow(domain=name, kind=kind, enabled=True, source=source)
                session.add(row)
            else:
                row.enabled, row.removed_at = True, None
                row.kind = kind if group_row is not None or kind != "primary" else row.kind
            if group_row is not None:
                row.group = group_row
            rows.append(row)
        session.flush()
        return rows

    def remove(self, session: Session, domain: str) -> None:
        """Stop measuring *domain*. The row stays, marked removed, so that probes'
        spooled measurements of it are still accepted for the spool's life."""
        name = normalize(domain)
        row = session.scalar(
            select(TargetRow).where(TargetRow.domain == name, TargetRow.removed_at.is_(None))
        )
        if row is None:
            raise NotFound(f"no target {name!r}")
        row.enabled, row.removed_at = False, datetime.now(UTC)
        session.flush()

    def all(self, session: Session) -> list[TargetRow]:
        query = (
            select(TargetRow)
            .where(TargetRow.removed_at.is_(None))
            .options(selectinload(TargetRow.group))
            .order_by(TargetRow.domain)
        )
        return list(session.scalars(query))

    def group_of(self, session: Session, domain: str) -> list[TargetRow]:
        """The domain's whole group (itself alone if it has none)."""
        row = session.scalar(select(TargetRow).where(TargetRow.domain == normalize(domain)))
        if row is None:
            raise NotFound(f"no target {domain!r}")
        if row.group_id is None:
            return [row]
        return list(session.scalars(select(TargetRow).where(TargetRow.group_id == row.group_id)))
