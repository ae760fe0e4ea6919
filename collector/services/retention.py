"""Retention: ``blockwatch-collector prune --retain DURATION`` deletes old measurements.

What goes: measurements (probes' and controls') received before now minus the
retention, with their verdicts and analysis-queue rows (both cascade from the
measurement). What stays, whatever its age:

- every measurement an event names as evidence (``events.evidence``), so that
  every evidence bundle stays complete and verifiable;
- the control measurements those evidence verdicts were judged against
  (``verdicts.controls``): the bundle carries them too.

Events, their changes, network states, probes and subscriptions are never
pruned: they are small, and the record of what happened. Deletion goes in
batches (one transaction each), so a prune running beside the collector holds
no long lock; a second prune at the same time deletes nothing twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import chunks, session_scope
from collector.core.models import AnalysisQueueRow, EventRow, MeasurementRow, VerdictRow

UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
MIN_RETENTION = timedelta(days=1)
BATCH = 2000


class RetentionError(ValueError):
    """A retention that cannot be right: the message says why."""


def parse_retention(text: str) -> timedelta:
    """``180d``, ``26w``, ``72h`` -> a timedelta of at least a day."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hdw])\s*", text.lower())
    if match is None:
        raise RetentionError(f"invalid retention {text!r}: use e.g. 180d, 26w or 72h")
    retention = timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])
    if retention < MIN_RETENTION:
        raise RetentionError(
            f"retention {text!r} is under a day: that deletes what the detector reads"
        )
    return retention


@dataclass(frozen=True, slots=True)
class PruneReport:
    cutoff: datetime
    deleted: int
    kept_as_evidence: int
    remaining: int


def evidence_ids(session: Session) -> set[str]:
    """Measurement ids that evidence bundles need: events' evidence and their controls."""
    wanted: set[str] = set()
    for (evidence,) in session.execute(select(EventRow.evidence)):
        wanted.update(str(m) for m in json.loads(evidence or "[]"))
    controls: set[str] = set()
    for ids in chunks(sorted(wanted)):
        query = select(VerdictRow.controls).where(VerdictRow.measurement_id.in_(ids))
        for (used,) in session.execute(query):
            controls.update(str(m) for m in json.loads(used or "[]"))
    return wanted | controls


def prune(
    sessions: sessionmaker[Session], retain: timedelta, now: datetime, *, dry_run: bool = False
) -> PruneReport:
    """Delete (or with *dry_run* count) what the retention lets go, a batch per
    transaction, read by id from where the last batch ended: neither the ids nor a
    lock are held for the whole table."""
    cutoff = now - retain
    with session_scope(sessions) as session:
        keep = evidence_ids(session)
    deleted = kept = last = 0
    while True:
        with session_scope(sessions) as session:
            rows = session.execute(
                select(MeasurementRow.id, MeasurementRow.measurement_id)
                .where(MeasurementRow.received_at < cutoff, MeasurementRow.id > last)
                .order_by(MeasurementRow.id)
                .limit(BATCH)
            ).all()
            if not rows:
                break
            last = rows[-1][0]
            batch = [pk for pk, measurement_id in rows if measurement_id not in keep]
            kept += len(rows) - len(batch)
            deleted += len(batch)
            if batch and not dry_run:
                # Explicitly, not only by cascade: SQLite cascades only with its pragma on.
                session.execute(delete(VerdictRow).where(VerdictRow.measurement_pk.in_(batch)))
                session.execute(
                    delete(AnalysisQueueRow).where(AnalysisQueueRow.measurement_pk.in_(batch))
                )
                session.execute(delete(MeasurementRow).where(MeasurementRow.id.in_(batch)))
    with session_scope(sessions) as session:
        remaining = session.scalar(select(func.count()).select_from(MeasurementRow)) or 0
    return PruneReport(cutoff, deleted, kept, remaining)
