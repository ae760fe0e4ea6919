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

History never rewrites what a live pass decided or what someone was alerted
about: a derived event that overlaps such an event is that event, and is left
as it is. A replay is idempotent: the closed history events of a key (those
that sent no alert) are derived again from all its stored votes each time.

``derive`` is the pure part: the events the machine makes of a series of votes.
Re-analysis (collector.detection.reanalysis) compares what it makes of the old
verdicts and of the new.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector.core.db import chunks
from collector.core.models import DetectorStateRow, EventChangeRow, EventRow
from collector.core.settings import CollectorSettings
from collector.detection.judging import Key
from collector.detection.machine import Change, Event, KeyState, Params, Vote, evaluate
from collector.detection.passes import new_event_row, params_from, votes_of, write_event
from collector.services.events import event_json
from collector.services.volunteers import standings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NEVER = datetime(9999, 1, 1, tzinfo=UTC)
KEYS_AT_ONCE = 200  # keys whose votes and events are read together


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
    """History's events for *keys* (see the module's docstring): the votes and events
    of KEYS_AT_ONCE keys read in one query each."""
    params = params_from(settings)
    cutoff = now - params.window
    probes = standings(session)
    stats = ReplayStats()
    for chunk in chunks(sorted(keys), KEYS_AT_ONCE):
        group = set(chunk)
        votes = votes_of(session, group, EPOCH, probes, until=cutoff)
        stored, alerted = _events_of(session, group)
        for key in sorted(group):
            stats.keys += 1
            kept = []
            for event in stored[key]:  # derived again below
                if event.history and event.state == "closed" and event.id not in alerted:
                    session.delete(event)
                else:
                    kept.append(event)
            _replay_key(session, key, votes.get(key, []), kept, settings, params, stats, now)
    return stats


@dataclass(frozen=True, slots=True)
class Derived:
    """An event the machine made of a series of votes: its last state, and how many
    changes it went through (its revision)."""

    event: Event
    revisions: int

    @property
    def ends(self) -> datetime:
        return self.event.ended_at or self.event.closed_at or NEVER


def derive(votes: Sequence[Vote], params: Params) -> tuple[list[Derived], KeyState]:
    """The events the machine makes stepping through *votes* in time order, each step
    at its vote's time with every vote of that moment, and its state at the end."""
    votes = sorted(votes, key=lambda v: v.started_at)
    times = [v.started_at for v in votes]
    state, found = KeyState(), list[Derived]()
    for i, vote in enumerate(votes):
        if i + 1 < len(votes) and times[i + 1] == vote.started_at:
            continue  # every vote of one moment first
        first = bisect.bisect_left(times, vote.started_at - params.window)
        outcome = evaluate(state, votes[first : i + 1], params, vote.started_at)
        state = outcome.state
        if outcome.change is None or state.event is None:
            continue
        if outcome.change is Change.OPENED:
            found.append(Derived(state.event, 1))
        elif found:
            found[-1] = Derived(state.event, found[-1].revisions + 1)
    return found, state


def overlaps(a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime) -> bool:
    return a_start <= b_end and b_start <= a_end


def _ends(event: EventRow) -> datetime:
    return event.ended_at or event.closed_at or NEVER


def _events_of(
    session: Session, keys: set[Key]
) -> tuple[defaultdict[Key, list[EventRow]], set[int]]:
    """The stored events of *keys*, and the ids of those someone was alerted about."""
    found: defaultdict[Key, list[EventRow]] = defaultdict(list)
    for names in chunks(sorted({domain for domain, _ in keys})):
        for event in session.scalars(select(EventRow).where(EventRow.domain.in_(names))):
            if (event.domain, event.cc) in keys:
                found[(event.domain, event.cc)].append(event)
    ids = [e.id for events in found.values() for e in events]
    alerted: set[int] = set()
    for group in chunks(ids):
        alerted.update(
            session.scalars(
                select(EventChangeRow.event_id).where(EventChangeRow.event_id.in_(group))
            )
        )
    return found, alerted


def _replay_key(
    session: Session,
    key: Key,
    votes: list[Vote],
    kept: list[EventRow],
    settings: CollectorSettings,
    params: Params,
    stats: ReplayStats,
    now: datetime,
) -> None:
    """*kept*: the key's events a live pass made or someone was alerted about."""
    domain, cc = key
    derived, state = derive(votes, params)
    row = None
    for found in derived:
        if any(overlaps(found.event.started_at, found.ends, e.started_at, _ends(e)) for e in kept):
            continue  # a live pass's, or someone was told of it: it stays as it is
        row = new_event_row(domain, cc, history=True)
        write_event(row, found.event)
        row.revision = found.revisions
        session.add(row)
        stats.opened += 1
        stats.ended += not found.event.open
    live = next((e for e in kept if e.state == "open"), None)
    last = derived[-1] if derived else None
    if last is None or not last.event.open:
        return
    if live is not None:  # the same block, seen live since: it began earlier
        live.started_at = min(live.started_at, last.event.started_at)
        stats.merged += 1
        return
    if row is None or row.state != "open":
        return  # it overlaps an event a live pass closed, which stays as it is
    session.flush()
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
