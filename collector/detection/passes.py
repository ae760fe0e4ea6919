"""One detection pass: new measurements to verdicts, verdicts to events.

1. Analysis (``collector.detection.judging``): the queue's new measurements,
   judged against their controls, become verdicts.
2. Detection. For every (domain, country) that got new verdicts, has an open
   event, or has probes whose votes are ageing out, the verdicts inside the
   window go through the pure machine (``collector.detection.machine``); its
   state, events, event changes and per-network states are written back.

Cost: analysis is linear in the new measurements (each document and control is
read once per pass); detection reads the window of the keys it evaluates, by
domain and time or by time alone (migration 0004), never older rows. See
docs/architecture.md, "Cost of a pass", and bench/bench_detection.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collector.analysis import RULES_VERSION, Observed
from collector.core import metrics
from collector.core.clock import Clock
from collector.core.db import chunks, session_scope
from collector.core.models import (
    DetectorStateRow,
    EventChangeRow,
    EventRow,
    NetworkStateRow,
    VerdictRow,
)
from collector.core.settings import CollectorSettings
from collector.detection.gauges import Gauges
from collector.detection.judging import Analyzer, Key, context_from
from collector.detection.machine import (
    Change,
    Event,
    KeyState,
    NetworkView,
    Outcome,
    Params,
    Vote,
    evaluate,
)
from collector.services.events import event_json, json_list
from collector.services.geo import Geolocator
from collector.services.ooni import OONI_PROBE_ID, OONI_VOLUNTEER
from collector.services.volunteers import Standing, standings
from probe_agent.protocol.addresses import FORGED_POOL_VERSION

log = logging.getLogger("blockwatch.collector.detection")


def params_from(settings: CollectorSettings) -> Params:
    return Params(
        window=timedelta(seconds=settings.window_seconds),
        open_min_probes=settings.open_min_probes,
        stay_min_probes=settings.stay_min_probes,
        close_min_probes=settings.close_min_probes,
        collapse_ratio=settings.collapse_ratio,
    )


@dataclass
class PassStats:
    analyzed: int = 0
    postponed: int = 0
    keys: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Detector:
    def __init__(
        self,
        settings: CollectorSettings,
        clock: Clock,
        geolocator: Geolocator | None = None,
        request_control: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.gauges = Gauges(settings)
        self.params = params_from(settings)
        self.request_control = request_control
        self.analyzer = Analyzer(settings, context_from(settings, geolocator))

    # -- the pass ----------------------------------------------------------------

    def run_pass(self, sessions: sessionmaker[Session]) -> PassStats:
        started = time.perf_counter()
        stats = PassStats()
        now = self.clock.now()
        touched: set[Key] = set()
        wanted: set[str] = set()
        parsed: dict[int, Observed] = {}  # control documents, read once per pass
        while True:
            with session_scope(sessions) as session:
                batch = self.analyzer.analyze_batch(session, now, parsed)
            stats.analyzed += len(batch.verdicts)
            stats.postponed += len(batch.postponed)
            touched |= batch.touched
            wanted |= batch.wanted
            if batch.size < self.settings.analysis_batch:
                break
        if wanted and self.request_control is not None:
            self.request_control(wanted)
        with session_scope(sessions) as session:
            stats.keys, stats.changes = self._detect(session, now, touched)
            self.gauges.update(session, now)
        stats.seconds = time.perf_counter() - started
        metrics.DETECTOR_PASS_SECONDS.observe(stats.seconds)
        return stats

    # -- 1. analysis ---------------------------------------------------------------

    # -- 2. detection ----------------------------------------------------------------

    def _detect(
        self, session: Session, now: datetime, touched: set[Key]
    ) -> tuple[int, dict[str, int]]:
        window_start = now - self.params.window
        keys = set(touched)
        keys |= {
            (domain, cc)
            for domain, cc in session.execute(
                select(DetectorStateRow.domain, DetectorStateRow.cc).where(
                    (DetectorStateRow.event_id.is_not(None))
                    # marked by a vouch or a revocation (services.volunteers.reevaluate)
                    | DetectorStateRow.evaluated_at.is_(None)
                    | (
                        (DetectorStateRow.active_probes > 0)
                        & (DetectorStateRow.last_vote_at < window_start)
                    )
                )
            )
        }
        if not keys:
            return 0, {}
        probes = standings(session)  # read each pass: a revocation counts at the next one
        withdrawn = frozenset({s.volunteer for s in probes.values()}) - {
            s.volunteer for s in probes.values() if s.active
        }
        votes = self._votes(session, keys, window_start, probes)
        states = self._states(session, keys)
        networks = self._networks(session, keys)
        event_ids = sorted({row.event_id for row in states.values() if row.event_id is not None})
        events = {
            row.id: row
            for ids in chunks(event_ids)
            for row in session.scalars(select(EventRow).where(EventRow.id.in_(ids)))
        }
        changes: dict[str, int] = defaultdict(int)
        # Everything was read above: no query below may flush row by row; the
        # session writes the states in batches when the pass commits.
        with session.no_autoflush:
            for key in sorted(keys):
                row = states.get(key)
                event_row = events.get(row.event_id) if row and row.event_id else None
                state = _key_state(row, event_row)
                outcome = evaluate(state, votes.get(key, []), self.params, now, withdrawn)
                self._save(session, key, row, event_row, outcome, now)
                _save_networks(session, key, networks.get(key, {}), outcome.networks, now)
                if outcome.change is not None:
                    changes[outcome.change.value] += 1
                    metrics.EVENT_CHANGES.labels(kind=outcome.change.value).inc()
                    opened = outcome.state.event
                    if outcome.change is Change.OPENED and opened is not None:
                        latency = (opened.detected_at - opened.started_at).total_seconds()
                        metrics.DETECTION_LATENCY.observe(max(0.0, latency))
        return len(keys), dict(changes)

    def _votes(
        self, session: Session, keys: set[Key], since: datetime, probes: dict[str, Standing]
    ) -> defaultdict[Key, list[Vote]]:
        return votes_of(session, keys, since, probes)

    def _states(self, session: Session, keys: set[Key]) -> dict[Key, DetectorStateRow]:
        return {(row.domain, row.cc): row for row in _rows_of(session, DetectorStateRow, keys)}

    def _networks(
        self, session: Session, keys: set[Key]
    ) -> defaultdict[Key, dict[int, NetworkStateRow]]:
        found: defaultdict[Key, dict[int, NetworkStateRow]] = defaultdict(dict)
        for row in _rows_of(session, NetworkStateRow, keys):
            found[(row.domain, row.cc)][row.asn] = row
        return found

    def _save(
        self,
        session: Session,
        key: Key,
        row: DetectorStateRow | None,
        event_row: EventRow | None,
        outcome: Outcome,
        now: datetime,
    ) -> None:
        domain, cc = key
        if row is None:
            row = DetectorStateRow(domain=domain, cc=cc)
            session.add(row)
        state = outcome.state
        row.active_probes = state.active_probes
        row.peak_probes = state.peak_probes
        row.collapsed_at = state.collapsed_at
        row.last_vote_at = state.last_vote_at
        row.evaluated_at = now
        event = state.event
        if event is not None:
            if event_row is None:
                event_row = new_event_row(domain, cc)
                session.add(event_row)
            write_event(event_row, event)
            if outcome.change is not None:
                event_row.revision += 1
            if event_row.id is None:
                session.flush()  # a new event: its id, for the state and the change
            row.event_id = event_row.id if event.open else None
            if outcome.change is not None:
                session.add(
                    EventChangeRow(
                        event_id=event_row.id,
                        kind=outcome.change.value,
                        revision=event_row.revision,
                        at=now,
                        snapshot=json.dumps(event_json(event_row, self.settings.public_url)),
                    )
                )
                log.info(
                    "event %s: %s in %s (%s)",
                    outcome.change.value,
                    domain,
                    cc,
                    ",".join(event.methods),
                )
        else:
            row.event_id = None


_State = TypeVar("_State", DetectorStateRow, NetworkStateRow)


def _rows_of(session: Session, model: type[_State], keys: set[Key]) -> Iterator[_State]:
    """The rows of *model* for *keys*, in one query per ``IN`` list of domains."""
    for names in chunks(sorted({domain for domain, _ in keys})):
        for row in session.scalars(select(model).where(model.domain.in_(names))):
            if (row.domain, row.cc) in keys:
                yield row


_FLAG_SETS: dict[str, frozenset[str]] = {}  # a handful of distinct values


def flag_set(flags: str) -> frozenset[str]:
    """A verdict's stored flags as a vote holds them, one object per distinct value
    (hundreds of thousands of votes a pass share a dozen sets)."""
    found = _FLAG_SETS.get(flags)
    if found is None:
        found = _FLAG_SETS[flags] = frozenset(flags.split(","))
    return found


def votes_of(
    session: Session,
    keys: set[Key],
    since: datetime,
    probes: dict[str, Standing],
    until: datetime | None = None,
) -> defaultdict[Key, list[Vote]]:
    """The votes of *keys* from *since* (and before *until*): by domain and time, or
    by time alone when the window is a large share of the table (docs/architecture.md,
    "Cost of a pass"); never a scan of the history. Each verdict is its volunteer's;
    those that do not count (``services.volunteers``) are left out. OONI's verdicts
    are a public source's, one volunteer a network (docs/methodology.md)."""
    found: defaultdict[Key, list[Vote]] = defaultdict(list)
    v = VerdictRow
    connection = session.connection()  # Core: hundreds of thousands of plain rows
    for names in chunks(sorted({domain for domain, _ in keys})):
        query = (
            select(
                v.domain,
                v.cc,
                v.probe_id,
                v.asn,
                v.network_source,
                v.started_at,
                v.flags,
                v.measurement_id,
            )
            .where(v.domain.in_(names))
            .where(v.started_at >= since)
        )
        if until is not None:
            query = query.where(v.started_at < until)
        for domain, cc, probe_id, asn, source, started_at, flags, mid in connection.execute(
            query
        ).all():
            key = (domain, cc)
            standing = probes.get(probe_id)
            if key in keys and standing is not None and standing.counts(cc, asn, source):
                public = probe_id == OONI_PROBE_ID  # one volunteer a network
                volunteer = f"{OONI_VOLUNTEER}{asn}" if public else standing.volunteer
                found[key].append(Vote(volunteer, asn, started_at, flag_set(flags), mid, public))
    return found


def _key_state(row: DetectorStateRow | None, event_row: EventRow | None) -> KeyState:
    if row is None:
        return KeyState()
    event = None
    if event_row is not None and event_row.state == "open":
        event = Event(
            started_at=event_row.started_at,
            detected_at=event_row.detected_at,
            updated_at=event_row.updated_at,
            last_blocked_at=event_row.last_blocked_at,
            scope=event_row.scope,
            asns=tuple(int(a) for a in json_list(event_row.asns)),
            methods=tuple(str(m) for m in json_list(event_row.methods)),
            methods_agreed=event_row.methods_agreed,
            volunteers=tuple(str(p) for p in json_list(event_row.volunteers)),
            evidence=tuple(str(e) for e in json_list(event_row.evidence)),
            reporting_probes=event_row.reporting_probes,
            volume_collapse_at=event_row.volume_collapse_at,
        )
    return KeyState(
        event=event,
        active_probes=row.active_probes,
        peak_probes=row.peak_probes,
        collapsed_at=row.collapsed_at,
        last_vote_at=row.last_vote_at,
    )


def new_event_row(domain: str, cc: str, history: bool = False) -> EventRow:
    """A new event's row, under the rules and pool that judged it."""
    return EventRow(
        domain=domain,
        cc=cc,
        revision=0,
        history=history,
        rule_version=RULES_VERSION,
        forged_pool_version=FORGED_POOL_VERSION,
    )


def write_event(row: EventRow, event: Event) -> None:
    row.state = "open" if event.open else "closed"
    row.scope = event.scope
    row.asns = json.dumps(list(event.asns))
    row.methods = json.dumps(list(event.methods))
    row.methods_agreed = event.methods_agreed
    row.volunteers = json.dumps(list(event.volunteers))
    row.evidence = json.dumps(list(event.evidence))
    row.started_at = event.started_at
    row.detected_at = event.detected_at
    row.updated_at = event.updated_at
    row.last_blocked_at = event.last_blocked_at
    row.ended_at = event.ended_at
    row.closed_at = event.closed_at
    row.reporting_probes = event.reporting_probes
    row.volume_collapse_at = event.volume_collapse_at


def _save_networks(
    session: Session,
    key: Key,
    stored: dict[int, NetworkStateRow],
    views: Sequence[NetworkView],
    now: datetime,
) -> None:
    domain, cc = key
    existing = dict(stored)
    for view in views:
        row = existing.pop(view.asn, None)
        if row is None:
            row = NetworkStateRow(domain=domain, cc=cc, asn=view.asn, since=view.since)
            session.add(row)
        elif row.state != view.state.value:
            row.since = view.since
        row.state = view.state.value
        row.methods = json.dumps(list(view.methods))
        row.probes = view.probes
        row.ooni = view.public
        row.updated_at = view.updated_at
    for row in existing.values():  # nobody in this network reported within the window
        if row.state != "unknown":
            row.state, row.since = "unknown", now
        row.probes = 0
        row.ooni = False
        row.methods = "[]"
