"""Re-analysis: the current rules (and forged-address pool) over stored measurements.

``blockwatch-collector reanalyse [--since DATE] [--apply]`` judges every stored
probe measurement (and OONI's) again, a batch at a time by id, exactly as a
pass would (collector.detection.judging: the controls matched by time, the
residue, the vantage), and compares each verdict with the stored one. Without
``--apply`` it writes nothing and reports what would change: verdicts whose
flags change, those that become blocked or stop being blocked, and the
(domain, country) keys they touch. With ``--apply`` it writes the new verdicts
under the current rule version (the detector reads them in place of the old),
remembers how far it went (``cursors``: ``reanalyse:<rules>:<pool>``, so a run
stopped half-way goes on from there, and a finished one does nothing more),
then replays the touched keys' history (collector.detection.history: events
that ended before the run are derived again and alert nobody) and has the next
pass evaluate them (the window's events change as any pass changes them).

Either way it reports the events: for every touched key, the machine
(collector.detection.history.derive) steps through all its stored votes once
with the old verdicts and once with the new, and the two series are compared:
an event only the new rules make would *open*, one only the old rules made, or
that the new rules end, would *close*, one both make differently (start, end,
methods, networks) would *change*. The verdicts are compared a batch at a time
from the same query that reads the measurements, and written back in one
statement per batch.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from collector.analysis import RULES_VERSION, Observed
from collector.analysis.ooni import OONIFormatError, parse
from collector.core.db import chunks, session_scope
from collector.core.models import CursorRow, MeasurementRow, VerdictRow, unpack_payload
from collector.core.settings import CollectorSettings
from collector.detection.history import (
    EPOCH,
    KEYS_AT_ONCE,
    Derived,
    ReplayStats,
    derive,
    overlaps,
    replay,
)
from collector.detection.judging import JUDGED_COLUMNS, Analyzer, Key, context_from
from collector.detection.machine import Params, Vote
from collector.detection.passes import flag_set, params_from, votes_of
from collector.services.geo import Geolocator
from collector.services.ooni import judge, verdict_columns
from collector.services.volunteers import evaluate_soon, standings
from probe_agent.protocol.addresses import FORGED_POOL_VERSION

BATCH = 1000
# Parsed control documents kept between batches: the next batch needs the same window's
# controls, and a run over 10M rows must not keep every control it ever read.
PARSED_LIMIT = 20000
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)  # no measurement waits for a control here


@dataclass
class ReanalysisStats:
    judged: int = 0
    unchanged: int = 0
    changed: int = 0  # flags differ
    reasons_changed: int = 0  # same flags, other reasons
    now_blocked: int = 0
    no_longer_blocked: int = 0
    written: int = 0
    keys: set[Key] = field(default_factory=set)
    by_change: Counter[str] = field(default_factory=Counter)  # "dns,tls -> tls": n
    # The flags that changed, by key and measurement id: (old, new).
    flips: dict[Key, dict[str, tuple[frozenset[str], frozenset[str]]]] = field(default_factory=dict)
    events: list[EventChange] = field(default_factory=list)
    history: ReplayStats | None = None  # what --apply's replay stored

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out["keys"] = len(self.keys)
        out["changes"] = dict(self.by_change.most_common())
        kinds = Counter(change.kind for change in self.events)
        out["events"] = {kind: kinds[kind] for kind in ("open", "close", "change")}
        out["event_changes"] = [change.to_json() for change in self.events]
        out["history"] = self.history.to_json() if self.history is not None else None
        return out


def _shape(event: Derived | None) -> dict[str, object] | None:
    if event is None:
        return None
    e = event.event
    return {
        "started_at": e.started_at.isoformat(),
        "ended_at": e.ended_at.isoformat() if e.ended_at else None,
        "scope": e.scope,
        "asns": list(e.asns),
        "methods": list(e.methods),
    }


@dataclass(frozen=True)
class EventChange:
    """An event the new verdicts would open, close or change."""

    domain: str
    cc: str
    kind: str  # open | close | change
    before: Derived | None
    after: Derived | None

    def describe(self) -> str:
        """One line: the event before and after, as start-end and methods."""

        def one(event: Derived | None) -> str:
            if event is None:
                return "none"
            e = event.event
            end = f"{e.ended_at:%Y-%m-%d %H:%M}" if e.ended_at else "ongoing"
            return f"{e.started_at:%Y-%m-%d %H:%M} to {end} {','.join(e.methods)}"

        return f"{one(self.before)} -> {one(self.after)}"

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "cc": self.cc, "kind": self.kind,
                "before": _shape(self.before), "after": _shape(self.after)}  # fmt: skip


def compare_events(key: Key, old: list[Derived], new: list[Derived]) -> list[EventChange]:
    """What the new series of events changes in the old, events matched by overlap."""
    domain, cc = key
    found: list[EventChange] = []
    matched: set[int] = set()
    for after in new:
        same = [i for i, before in enumerate(old)
                if overlaps(before.event.started_at, before.ends, after.event.started_at,
                            after.ends)]  # fmt: skip
        matched.update(same)
        if not same:
            found.append(EventChange(domain, cc, "open", None, after))
            continue
        before = old[same[0]]
        if before.event.open and not after.event.open:
            found.append(EventChange(domain, cc, "close", before, after))
        elif len(same) > 1 or _shape(before) != _shape(after):
            found.append(EventChange(domain, cc, "change", before, after))
    for i, before in enumerate(old):
        if i not in matched:
            found.append(EventChange(domain, cc, "close", before, None))
    return found


def cursor_name() -> str:
    """The run's cursor: one per rule version and forged-address pool, so that a new
    pool alone (its verdicts carry no version of their own) is a new run too."""
    return f"reanalyse:{RULES_VERSION}:{FORGED_POOL_VERSION}"


class Reanalysis:
    def __init__(self, settings: CollectorSettings, geolocator: Geolocator | None = None) -> None:
        self.settings = settings
        self.lab_networks = settings.lab_network_list
        self.analyzer = Analyzer(settings, context_from(settings, geolocator))

    def run(
        self,
        sessions: sessionmaker[Session],
        since: datetime | None,
        apply: bool,
        progress: Callable[[int], None] = lambda n: None,
        now: datetime | None = None,
    ) -> ReanalysisStats:
        stats = ReanalysisStats()
        last = self._start(sessions) if apply else 0
        parsed: dict[int, Observed] = {}
        while True:
            with session_scope(sessions) as session:
                rows, stored = self._batch(session, last, since)
                if not rows:
                    break
                judged = [row for row in rows if row.measurement_pk in stored]
                new = self._judge(session, judged, parsed)  # the rest wait in the queue
                self._compare(session, judged, stored, new, stats, apply)
                last = rows[-1].measurement_pk
                if apply:
                    self._advance(session, last)
            progress(len(rows))
            if len(parsed) > PARSED_LIMIT:
                parsed.clear()
        now = now or datetime.now(UTC)
        if stats.flips:
            with session_scope(sessions) as session:
                stats.events = self._events(session, stats.flips, stored_new=apply, now=now)
        if apply and stats.keys:
            with session_scope(sessions) as session:
                stats.history = replay(session, stats.keys, self.settings, now)
                evaluate_soon(session, stats.keys)
        return stats

    def _events(
        self,
        session: Session,
        flips: dict[Key, dict[str, tuple[frozenset[str], frozenset[str]]]],
        stored_new: bool,
        now: datetime,
    ) -> list[EventChange]:
        """The events of the keys whose verdicts flipped, under the old verdicts and
        under the new (the database holds the new ones when *stored_new*)."""
        params = params_from(self.settings)
        probes = standings(session)
        found: list[EventChange] = []
        for group in chunks(sorted(flips), KEYS_AT_ONCE):
            votes = votes_of(session, set(group), EPOCH, probes, until=now)
            for key in group:
                found.extend(self._key_events(key, votes.get(key, []), flips[key],
                                              stored_new, params))  # fmt: skip
        return found

    @staticmethod
    def _key_events(
        key: Key,
        votes: list[Vote],
        flipped: dict[str, tuple[frozenset[str], frozenset[str]]],
        stored_new: bool,
        params: Params,
    ) -> list[EventChange]:
        other = [
            replace(v, flags=flipped[v.measurement_id][0 if stored_new else 1])
            if v.measurement_id in flipped else v
            for v in votes
        ]  # fmt: skip
        old, new = (other, votes) if stored_new else (votes, other)
        return compare_events(key, derive(old, params)[0], derive(new, params)[0])

    def _start(self, sessions: sessionmaker[Session]) -> int:
        with session_scope(sessions) as session:
            row = session.get(CursorRow, cursor_name())
            return row.position if row is not None else 0

    def _advance(self, session: Session, position: int) -> None:
        row = session.get(CursorRow, cursor_name())
        if row is None:
            session.add(CursorRow(name=cursor_name(), position=position))
        else:
            row.position = position

    def _batch(
        self, session: Session, after: int, since: datetime | None
    ) -> tuple[list[Any], dict[int, Any]]:
        """The next BATCH measurements by id, and their stored verdicts by
        ``measurement_pk`` (a measurement not judged yet has none). Two queries
        (the measurements by primary key, then their verdicts by ``measurement_pk``):
        a join left the plan to table statistics, and PostgreSQL without them (a table
        just loaded) hash-joined every verdict for every batch."""
        m, v = MeasurementRow, VerdictRow
        query = (
            select(m.id.label("measurement_pk"), *JUDGED_COLUMNS, m.source)
            .where(m.id > after, m.role.in_(("probe", "ooni")))
            .order_by(m.id)
            .limit(BATCH)
        )
        if since is not None:
            query = query.where(m.started_at >= since)
        measurements = list(session.execute(query).all())
        if not measurements:
            return [], {}
        stored = {
            row.measurement_pk: row
            for row in session.execute(
                select(v.measurement_pk, v.id, v.flags, v.blocked, v.reasons, v.rule_version).where(
                    v.measurement_pk.in_([r.measurement_pk for r in measurements])
                )
            )
        }
        return measurements, stored

    def _judge(
        self, session: Session, rows: list[Any], parsed: dict[int, Observed]
    ) -> dict[int, dict[str, object]]:
        """The new verdict row of each measurement, by its primary key."""
        ours = [r for r in rows if r.source != "ooni"]
        judged = self.analyzer.judge_rows(session, ours, parsed, FAR_FUTURE)
        new: dict[int, dict[str, object]] = {int(v["measurement_pk"]): v for v in judged.verdicts}
        for row in rows:
            if row.source != "ooni":
                continue
            try:
                measurement = parse(json.loads(unpack_payload(row.payload)))
            except (OONIFormatError, ValueError):
                continue
            verdict = judge(measurement, self.lab_networks)
            new[row.measurement_pk] = verdict_columns(measurement, verdict)
        return new

    def _compare(
        self,
        session: Session,
        rows: list[Any],
        stored: dict[int, Any],
        new: dict[int, dict[str, object]],
        stats: ReanalysisStats,
        apply: bool,
    ) -> None:
        """Each new verdict beside the stored one; with *apply*, those that differ
        written back in one statement."""
        writes: list[dict[str, object]] = []
        for row in rows:
            fresh, old = new.get(row.measurement_pk), stored[row.measurement_pk]
            if fresh is None:
                continue
            stats.judged += 1
            if fresh["flags"] != old.flags:
                stats.changed += 1
                stats.by_change[f"{old.flags} -> {fresh['flags']}"] += 1
                stats.now_blocked += bool(fresh["blocked"]) and not old.blocked
                stats.no_longer_blocked += bool(old.blocked) and not fresh["blocked"]
                key = (row.domain, row.cc)
                stats.keys.add(key)
                stats.flips.setdefault(key, {})[row.measurement_id] = (
                    flag_set(old.flags),
                    flag_set(str(fresh["flags"])),
                )
            elif fresh["reasons"] != old.reasons:
                stats.reasons_changed += 1
            else:
                stats.unchanged += 1
            if apply and (fresh["flags"], fresh["reasons"], RULES_VERSION) != (
                old.flags, old.reasons, old.rule_version
            ):  # fmt: skip
                writes.append({
                    "id": old.id, "flags": fresh["flags"], "blocked": fresh["blocked"],
                    "reasons": fresh["reasons"], "triggers": fresh["triggers"],
                    "controls": fresh["controls"], "rule_version": RULES_VERSION,
                })  # fmt: skip
        if writes:  # by primary key, one executemany
            session.execute(update(VerdictRow), writes)
            stats.written += len(writes)
