"""One detection pass: new measurements to verdicts, verdicts to events.

1. Analysis. The pass reads the ``analysis_queue`` (filled at ingest), never
   the history. Each measurement is matched by time to the controls of its
   domain: one that looks fine may use any control within ``control_window``;
   one that does not needs a control taken *after* it (a control from before an
   outage would make the outage look like a block), and if a control from
   before it failed, that one wins: a block needs the instance to work from the
   control on both sides. A measurement without such a control waits (the
   control prober is asked to measure its domain now) for ``control_wait``,
   then gets ``unknown``. SNI triggers of the same probe, from this batch and
   from stored verdicts, go into the analysis so that residue is recognised.
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
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, literal_column, select, update
from sqlalchemy.orm import Session, sessionmaker

from collector.analysis import (
    RULES_VERSION,
    Context,
    Observed,
    Trigger,
    Verdict,
    analyze,
    dns_silent,
    read,
    sni_triggers,
)
from collector.analysis import Flag as VerdictFlag
from collector.core import metrics
from collector.core.clock import Clock
from collector.core.db import session_scope
from collector.core.models import (
    AnalysisQueueRow,
    DetectorStateRow,
    EventChangeRow,
    EventRow,
    MeasurementRow,
    NetworkStateRow,
    VerdictRow,
)
from collector.core.settings import CollectorSettings
from collector.detection.machine import (
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
from probe_agent.protocol.addresses import FORGED_POOL_VERSION
from probe_agent.protocol.inputs import parse_network

log = logging.getLogger("blockwatch.collector.detection")
Key = tuple[str, str]  # (domain, country)
_T = TypeVar("_T")
CHUNK = 500  # names per IN (...) list
# A probe's round: its measurements started within this much of each other. When at
# least VANTAGE_MIN of them and half or more got no DNS at all, the probe's resolver
# or network failed (docs/methodology.md, vantage.dns_unreachable).
ROUND_SPREAD = timedelta(seconds=60)
VANTAGE_MIN = 3


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


@dataclass
class _Evidence:
    """What a batch is judged against, read once per batch."""

    controls: defaultdict[str, list[_Control]]
    triggers: defaultdict[str, list[Trigger]]
    vantage_failing: set[int]


@dataclass
class _Judged:
    """One analyzed batch: verdict rows to insert, measurements that wait for a
    control, the domains whose controls they wait for, and the keys to detect."""

    verdicts: list[dict[str, Any]] = field(default_factory=list)
    postponed: list[int] = field(default_factory=list)
    wanted: set[str] = field(default_factory=set)
    touched: set[Key] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.verdicts) + len(self.postponed)


@dataclass(frozen=True, slots=True)
class _Control:
    measurement_id: str
    probe_id: str
    started_at: datetime
    doc: Observed


def _observed(payload: bytes) -> Observed:
    """The observations inside a stored signed document (validated at ingest), read."""
    try:
        document = json.loads(zlib.decompress(payload))
        measurement = document.get("measurement") if isinstance(document, dict) else None
    except (ValueError, zlib.error):
        measurement = None
    return read(measurement if isinstance(measurement, dict) else {})


def _chunks(items: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _nearest(controls: Iterable[_Control], key: Callable[[_Control], float]) -> list[_Control]:
    """One control per vantage: the one with the smallest *key*."""
    best: dict[str, _Control] = {}
    for control in controls:
        current = best.get(control.probe_id)
        if current is None or key(control) < key(current):
            best[control.probe_id] = control
    return list(best.values())


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
        self.params = params_from(settings)
        self.request_control = request_control
        networks = tuple(parse_network(n) for n in settings.lab_networks.split(",") if n.strip())

        def asn_of(ip: str) -> int | None:
            found = geolocator.lookup(ip) if geolocator is not None else None
            return found[1] or None if found else None

        self.context = Context(
            asn_of=asn_of, lab_networks=networks, residual_seconds=settings.residual_seconds
        )

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
                batch = self._analyze_batch(session, now, parsed)
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
            self._gauges(session)
        stats.seconds = time.perf_counter() - started
        metrics.DETECTOR_PASS_SECONDS.observe(stats.seconds)
        return stats

    # -- 1. analysis ---------------------------------------------------------------

    def _analyze_batch(
        self, session: Session, now: datetime, parsed: dict[int, Observed]
    ) -> _Judged:
        """The next batch of the queue: read, judged, its verdicts written.
        *parsed* caches control documents across the pass's batches."""
        rows = self._queued(session, now)
        if not rows:
            return _Judged()
        docs = {row.measurement_pk: _observed(row.payload) for row in rows}
        evidence = self._evidence(session, rows, docs, parsed)
        judged = self._judge_batch(rows, docs, evidence, now)
        self._write_verdicts(session, judged, now)
        return judged

    def _queued(self, session: Session, now: datetime) -> Sequence[Any]:
        """The queue's due measurements, oldest first, one batch."""
        m = MeasurementRow
        return session.execute(
            select(
                AnalysisQueueRow.measurement_pk,
                m.measurement_id,
                m.probe_id,
                m.domain,
                m.cc,
                m.asn,
                m.started_at,
                m.payload,
            )
            .join(m, m.id == AnalysisQueueRow.measurement_pk)
            .where(AnalysisQueueRow.not_before <= now)
            .order_by(AnalysisQueueRow.measurement_pk)
            .limit(self.settings.analysis_batch)
        ).all()

    def _evidence(
        self,
        session: Session,
        rows: Sequence[Any],
        docs: dict[int, Observed],
        parsed: dict[int, Observed],
    ) -> _Evidence:
        window = timedelta(seconds=self.settings.control_window_seconds)
        earliest = min(row.started_at for row in rows)
        latest = max(row.started_at for row in rows)
        domains = {row.domain for row in rows}
        return _Evidence(
            controls=self._controls(session, domains, earliest - window, latest + window, parsed),
            triggers=self._triggers(session, rows, docs, earliest),
            vantage_failing=_vantage_failing(rows, docs),
        )

    def _judge_batch(
        self, rows: Sequence[Any], docs: dict[int, Observed], evidence: _Evidence, now: datetime
    ) -> _Judged:
        window = timedelta(seconds=self.settings.control_window_seconds)
        wait = timedelta(seconds=self.settings.control_wait_seconds)
        judged = _Judged()
        for row in rows:
            doc = docs[row.measurement_pk]
            own = sni_triggers(doc)
            others = tuple(t for t in evidence.triggers[row.probe_id] if t not in own)
            failing = row.measurement_pk in evidence.vantage_failing
            ctx = replace(self.context, triggers=others, vantage_dns_failing=failing)
            verdict, used = self._judge(doc, row.started_at, evidence.controls[row.domain],
                                        window, ctx)  # fmt: skip
            if verdict is None:
                if now - row.started_at < wait:
                    judged.postponed.append(row.measurement_pk)
                    judged.wanted.add(row.domain)
                    continue
                verdict, used = analyze(doc, [], ctx), []
            judged.verdicts.append(_verdict_row(row, verdict, own, used, now))
            judged.touched.add((row.domain, row.cc))
        return judged

    def _write_verdicts(self, session: Session, judged: _Judged, now: datetime) -> None:
        """Insert the verdicts and leave the queue; the postponed retry a little later."""
        if judged.verdicts:
            for verdict in judged.verdicts:
                for flag in filter(None, verdict["flags"].split(",")):
                    metrics.VERDICTS.labels(flag=flag).inc()
            session.execute(insert(VerdictRow), judged.verdicts)
            done = [v["measurement_pk"] for v in judged.verdicts]
            session.execute(
                delete(AnalysisQueueRow).where(AnalysisQueueRow.measurement_pk.in_(done))
            )
        if judged.postponed:
            retry = now + timedelta(seconds=min(self.settings.detect_interval, 30.0) / 2)
            session.execute(
                update(AnalysisQueueRow)
                .where(AnalysisQueueRow.measurement_pk.in_(judged.postponed))
                .values(not_before=retry)
            )

    def _judge(
        self,
        doc: Observed,
        started_at: datetime,
        candidates: list[_Control],
        window: timedelta,
        ctx: Context,
    ) -> tuple[Verdict | None, list[_Control]]:
        """The verdict and the controls it used; None when it must wait for a control."""
        near = [c for c in candidates if abs(c.started_at - started_at) <= window]
        after = _nearest(
            (c for c in near if c.started_at >= started_at),
            lambda c: (c.started_at - started_at).total_seconds(),
        )
        before = _nearest(
            (c for c in near if c.started_at < started_at),
            lambda c: (started_at - c.started_at).total_seconds(),
        )
        if before or after:
            # A measurement that reached the instance is fine whatever the control's time.
            quick = analyze(doc, [c.doc for c in before + after], ctx)
            if quick.flags == {VerdictFlag.OK}:
                return quick, before + after
        if not after:
            return None, []
        verdict = analyze(doc, [c.doc for c in after], ctx)
        if verdict.blocked and before:
            earlier = analyze(doc, [c.doc for c in before], ctx)
            if not earlier.blocked:
                # The instance failed from the control just before: an outage
                # (ending), not a block.
                return earlier, before
        return verdict, after

    def _controls(
        self,
        session: Session,
        domains: set[str],
        since: datetime,
        until: datetime,
        parsed: dict[int, Observed],
    ) -> defaultdict[str, list[_Control]]:
        """The controls of *domains* between *since* and *until*. The role is a
        literal, not a parameter, so that PostgreSQL proves the partial index
        ``ix_measurements_controls`` applies and reads control rows only."""
        found: defaultdict[str, list[_Control]] = defaultdict(list)
        m = MeasurementRow
        for names in _chunks(sorted(domains)):
            for row in session.execute(
                select(m.id, m.measurement_id, m.probe_id, m.domain, m.started_at, m.payload)
                .where(m.role == literal_column("'control'"))
                .where(m.domain.in_(names))
                .where(m.started_at >= since, m.started_at <= until)
            ):
                doc = parsed.get(row.id)
                if doc is None:  # the pass's cache: every batch reads the same controls
                    doc = parsed[row.id] = _observed(row.payload)
                found[row.domain].append(
                    _Control(row.measurement_id, row.probe_id, row.started_at, doc)
                )
        return found

    def _triggers(
        self,
        session: Session,
        rows: Sequence[Any],
        docs: dict[int, Observed],
        since: datetime,
    ) -> defaultdict[str, list[Trigger]]:
        """SNI triggers per probe: stored ones within the residual time, and this batch's."""
        found: defaultdict[str, list[Trigger]] = defaultdict(list)
        for row in rows:
            found[row.probe_id].extend(sni_triggers(docs[row.measurement_pk]))
        residual = timedelta(seconds=self.settings.residual_seconds)
        if not residual:
            return found
        probes = sorted({row.probe_id for row in rows})
        for names in _chunks(probes):
            for probe_id, stored in session.execute(
                select(VerdictRow.probe_id, VerdictRow.triggers)
                .where(VerdictRow.probe_id.in_(names))
                .where(VerdictRow.started_at >= since - residual)
                # a literal: the partial index ix_verdicts_probe_triggers applies
                .where(VerdictRow.triggers != literal_column("'[]'"))
            ):
                for ip, port, at in json.loads(stored):
                    found[probe_id].append(Trigger(ip, int(port), datetime.fromisoformat(at)))
        return found

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
                    | (
                        (DetectorStateRow.active_probes > 0)
                        & (DetectorStateRow.last_vote_at < window_start)
                    )
                )
            )
        }
        if not keys:
            return 0, {}
        votes = self._votes(session, keys, window_start)
        states = self._states(session, keys)
        networks = self._networks(session, keys)
        event_ids = sorted({row.event_id for row in states.values() if row.event_id is not None})
        events = {
            row.id: row
            for ids in _chunks(event_ids)
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
                outcome = evaluate(state, votes.get(key, []), self.params, now)
                self._save(session, key, row, event_row, outcome, now)
                _save_networks(session, key, networks.get(key, {}), outcome.networks, now)
                if outcome.change is not None:
                    changes[outcome.change.value] += 1
                    metrics.EVENT_CHANGES.labels(kind=outcome.change.value).inc()
        return len(keys), dict(changes)

    def _votes(
        self, session: Session, keys: set[Key], since: datetime
    ) -> defaultdict[Key, list[Vote]]:
        """The verdicts of *keys* since the window's start: by domain and time, or by
        time alone when the window is a large share of the table (docs/architecture.md,
        "Cost of a pass"); never a scan of the history."""
        found: defaultdict[Key, list[Vote]] = defaultdict(list)
        flag_sets: dict[str, frozenset[str]] = {}  # a handful of distinct values
        v = VerdictRow
        connection = session.connection()  # Core: hundreds of thousands of plain rows
        for names in _chunks(sorted({domain for domain, _ in keys})):
            for domain, cc, probe_id, asn, started_at, flags, measurement_id in connection.execute(
                select(v.domain, v.cc, v.probe_id, v.asn, v.started_at, v.flags, v.measurement_id)
                .where(v.domain.in_(names))
                .where(v.started_at >= since)
            ).all():
                key = (domain, cc)
                if key in keys:
                    flag_set = flag_sets.get(flags)
                    if flag_set is None:
                        flag_set = flag_sets[flags] = frozenset(flags.split(","))
                    found[key].append(Vote(probe_id, asn, started_at, flag_set, measurement_id))
        return found

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
                event_row = EventRow(
                    domain=domain,
                    cc=cc,
                    revision=0,
                    rule_version=RULES_VERSION,
                    forged_pool_version=FORGED_POOL_VERSION,
                )
                session.add(event_row)
            _write_event(event_row, event)
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
                        snapshot=json.dumps(event_json(event_row)),
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

    def _gauges(self, session: Session) -> None:
        metrics.ANALYSIS_BACKLOG.set(
            session.scalar(select(func.count()).select_from(AnalysisQueueRow)) or 0
        )
        metrics.VOLUME_COLLAPSES.set(
            session.scalar(
                select(func.count())
                .select_from(DetectorStateRow)
                .where(DetectorStateRow.collapsed_at.is_not(None))
            )
            or 0
        )
        open_by_cc: dict[str, int] = {
            cc: count
            for cc, count in session.execute(
                select(EventRow.cc, func.count())
                .where(EventRow.state == "open")
                .group_by(EventRow.cc)
            )
        }
        for sample in next(iter(metrics.OPEN_EVENTS.collect())).samples:
            cc = sample.labels.get("cc")
            if cc and cc not in open_by_cc:
                open_by_cc[cc] = 0
        for cc, count in open_by_cc.items():
            metrics.OPEN_EVENTS.labels(cc=cc).set(count)


_State = TypeVar("_State", DetectorStateRow, NetworkStateRow)


def _rows_of(session: Session, model: type[_State], keys: set[Key]) -> Iterator[_State]:
    """The rows of *model* for *keys*, in one query per CHUNK domains."""
    for names in _chunks(sorted({domain for domain, _ in keys})):
        for row in session.scalars(select(model).where(model.domain.in_(names))):
            if (row.domain, row.cc) in keys:
                yield row


def _vantage_failing(rows: Sequence[Any], docs: dict[int, Observed]) -> set[int]:
    """Measurements whose probe's round mostly got no DNS answer at all."""
    rounds: defaultdict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for row in rows:
        rounds[row.probe_id].append((row.started_at, dns_silent(docs[row.measurement_pk])))
    found = set()
    for row in rows:
        peers = [silent for at, silent in rounds[row.probe_id]
                 if abs(at - row.started_at) <= ROUND_SPREAD]  # fmt: skip
        if len(peers) >= VANTAGE_MIN and 2 * sum(peers) >= len(peers):
            found.add(row.measurement_pk)
    return found


def _verdict_row(
    row: Any, verdict: Verdict, own: Sequence[Trigger], used: Sequence[_Control], now: datetime
) -> dict[str, Any]:
    """The ``verdicts`` row of one judged measurement."""
    return {
        "measurement_pk": row.measurement_pk,
        "measurement_id": row.measurement_id,
        "probe_id": row.probe_id,
        "domain": row.domain,
        "cc": row.cc,
        "asn": row.asn,
        "started_at": row.started_at,
        "flags": ",".join(sorted(verdict.flags)),
        "blocked": verdict.blocked,
        "reasons": json.dumps(list(verdict.reasons)),
        "triggers": json.dumps([[t.ip, t.port, t.at.isoformat()] for t in own]),
        "controls": json.dumps([c.measurement_id for c in used]),
        "rule_version": verdict.rule_version,
        "analyzed_at": now,
    }


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
            probe_ids=tuple(str(p) for p in json_list(event_row.probe_ids)),
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


def _write_event(row: EventRow, event: Event) -> None:
    row.state = "open" if event.open else "closed"
    row.scope = event.scope
    row.asns = json.dumps(list(event.asns))
    row.methods = json.dumps(list(event.methods))
    row.probe_ids = json.dumps(list(event.probe_ids))
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
        row.updated_at = view.updated_at
    for row in existing.values():  # nobody in this network reported within the window
        if row.state != "unknown":
            row.state, row.since = "unknown", now
        row.probes = 0
        row.methods = "[]"
