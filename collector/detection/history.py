"""History: the events that stored verdicts older than the detector's window make.

A live pass only reads the window (collector.detection.passes): measurements
imported from OONI's archive (``ooni import``) months after they were made
never reach it. ``replay`` steps the same machine (collector.detection.machine)
through a (domain, country)'s stored votes in time order, each step at its
vote's time, up to the window's start, or to the first event of the live
detector, whichever is earlier (history never rewrites what a live pass
decided). What it opens is marked ``history``:

- an event that history shows ending is stored closed, and no alert is sent
  for it (it ended before the import);
- an event still open at the end of history goes on: the live detector takes
  it over (it closes only when probes of its networks say ok, as any event),
  and its subscribers get one ``opened`` alert, the event marked ``history``;
  when the live detector already has an open event there, the two are one
  block, and the live event's start moves back to history's.

A replay is idempotent: the closed history events of a key (those that sent
no alert) are derived again from all its stored votes each time.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector.core.models import DetectorStateRow, EventChangeRow, EventRow
from collector.core.settings import CollectorSettings
from collector.detection.judging import Key
from collector.detection.machine import Change, KeyState, Params, evaluate
from collector.detection.passes import new_event_row, params_from, votes_of, write_event
from collector.services.events import event_json
from collector.services.volunteers import Standing, standings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class ReplayStats:
    keys: int = 0
    opened: int = 0  # events history opened
    ended: int = 0  # ... of which it saw end (stored closed, never alerted)
    ongoing: int = 0  # ... still going on: handed to the live detector, alerted once
    merged: int = 0  # ... that were a live event's beginning

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


def replay(
    session: Session, keys: set[Key], settings: CollectorSettings, now: datetime
) -> ReplayStats:
    """History's events for *keys* (see the module's docstring)."""
    params = params_from(settings)
    cutoff = now - params.window
    probes = standings(session)
    stats = ReplayStats()
    for key in sorted(keys):
        stats.keys += 1
        _replay_key(session, key, settings, params, cutoff, probes, stats, now)
    return stats


def _replay_key(
    session: Session,
    key: Key,
    settings: CollectorSettings,
    params: Params,
    cutoff: datetime,
    probes: dict[str, Standing],
    stats: ReplayStats,
    now: datetime,
) -> None:
    domain, cc = key
    events = list(session.scalars(select(EventRow).where(EventRow.domain == domain,
                                                         EventRow.cc == cc)))  # fmt: skip
    alerted = set(
        session.scalars(
            select(EventChangeRow.event_id).where(
                EventChangeRow.event_id.in_([e.id for e in events])
            )
        )
    )
    for event in events:  # derived again below
        if event.history and event.state == "closed" and event.id not in alerted:
            session.delete(event)
    kept = [e for e in events if not (e.history and e.state == "closed" and e.id not in alerted)]
    end = min([cutoff, *(e.started_at for e in kept)])
    votes = sorted(
        votes_of(session, {key}, EPOCH, probes, until=end).get(key, []),
        key=lambda v: v.started_at,
    )
    if not votes:
        return
    times = [v.started_at for v in votes]
    state, row = KeyState(), None
    for i, vote in enumerate(votes):
        if i + 1 < len(votes) and times[i + 1] == vote.started_at:
            continue  # every vote of one moment first
        first = bisect.bisect_left(times, vote.started_at - params.window)
        outcome = evaluate(state, votes[first : i + 1], params, vote.started_at)
        state = outcome.state
        if outcome.change is None or state.event is None:
            continue
        if outcome.change is Change.OPENED:
            row = new_event_row(domain, cc, history=True)
            session.add(row)
            stats.opened += 1
        if row is not None:
            write_event(row, state.event)
            row.revision += 1
        if outcome.change is Change.CLOSED:
            stats.ended += 1
            row = None
    if row is None or state.event is None or not state.event.open:
        return
    session.flush()
    live = next((e for e in kept if e.state == "open"), None)
    if live is not None:  # the same block, seen live since: it began earlier
        live.started_at = min(live.started_at, row.started_at)
        session.delete(row)
        stats.merged += 1
        return
    detector = session.get(DetectorStateRow, key)
    if detector is None:
        detector = DetectorStateRow(domain=domain, cc=cc)
        session.add(detector)
    detector.event_id, detector.evaluated_at = row.id, None
    detector.last_vote_at = state.last_vote_at
    detector.active_probes, detector.peak_probes = state.active_probes, state.peak_probes
    session.add(
        EventChangeRow(event_id=row.id, kind=Change.OPENED.value, revision=row.revision, at=now,
                       snapshot=json.dumps(event_json(row, settings.public_url)))
    )  # fmt: skip
    stats.ongoing += 1
