"""The analysis step of a detection pass: queued measurements to verdicts.

The pass reads the ``analysis_queue`` (filled at ingest), never the history.
Each measurement is matched by time to the controls of its domain: one that
looks fine may use any control within ``control_window``; one that does not
needs a control taken *after* it (a control from before an outage would make
the outage look like a block), and if a control from before it failed, that one
wins: a block needs the instance to work from the control on both sides. A
measurement without such a control waits (the control prober is asked to
measure its domain now) for ``control_wait``, then gets ``unknown``. SNI
triggers of the same probe, from this batch and from stored verdicts, go into
the analysis so that residue is recognised; a probe whose round mostly got no
DNS at all is flagged as a failing vantage.

Cost: linear in the new measurements; each document and control is read once
per pass (the caller keeps the cache of parsed controls across batches).
"""

from __future__ import annotations

import bisect
import json
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, literal_column, select, update
from sqlalchemy.orm import Session

from collector.analysis import (
    Context,
    Observed,
    Trigger,
    Verdict,
    analyze,
    canonical_ip,
    dns_silent,
    read,
    sni_triggers,
)
from collector.analysis import Flag as VerdictFlag
from collector.core import metrics
from collector.core.db import chunks
from collector.core.models import AnalysisQueueRow, MeasurementRow, VerdictRow, unpack_payload
from collector.core.settings import CollectorSettings
from collector.services.geo import Geolocator

Key = tuple[str, str]  # (domain, country)
# A probe's round: its measurements started within this much of each other. When at
# least VANTAGE_MIN of them and half or more got no DNS at all, the probe's resolver
# or network failed (docs/methodology.md, vantage.dns_unreachable).
ROUND_SPREAD = timedelta(seconds=60)
VANTAGE_MIN = 3


@dataclass
class _Evidence:
    """What a batch is judged against, read once per batch."""

    controls: defaultdict[str, list[_Control]]
    triggers: _Triggers
    vantage_failing: set[int]


class _Triggers:
    """The SNI triggers of each probe, by address and time. A measurement is handed,
    for each of its steps, only the latest trigger on the step's address at or
    before the step (not its own): that one alone decides whether the step is
    residue (collector.analysis.evidence.residue: a trigger counts when the step
    lies within the residual time after it and no decoy handshake worked on that
    triple after it; if any trigger before the step does, the latest does). So a
    batch costs its steps times log(triggers), however many triggers an address
    (a CDN's, say) gathers, not every measurement times every trigger."""

    def __init__(self) -> None:
        self._by: defaultdict[tuple[str, str, int], list[tuple[datetime, Trigger]]]
        self._by = defaultdict(list)
        self._sorted = True

    def add(self, probe_id: str, trigger: Trigger) -> None:
        ip = canonical_ip(trigger.ip)
        if ip is not None:
            at = trigger.at if trigger.at.tzinfo else trigger.at.replace(tzinfo=UTC)
            self._by[(probe_id, ip, trigger.port)].append((at, trigger))
            self._sorted = False

    def near(self, probe_id: str, doc: Observed, own: Sequence[Trigger]) -> tuple[Trigger, ...]:
        """For each step of *doc*, the latest other trigger of *probe_id* before it."""
        if not self._sorted:
            for series in self._by.values():
                series.sort(key=lambda pair: pair[0])
            self._sorted = True
        near: dict[Trigger, None] = {}
        for step in (*doc.tcp, *doc.tls, *doc.http):
            when = doc.at(step)
            timed = self._by.get((probe_id, step.ip, step.port))
            if when is None or not timed:
                continue
            for i in range(bisect.bisect_right(timed, when, key=lambda pair: pair[0]), 0, -1):
                trigger = timed[i - 1][1]
                if trigger not in own:
                    near[trigger] = None
                    break
        return tuple(near)


@dataclass
class Judged:
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


# What judging reads of a measurement, besides its primary key (``measurement_pk``).
JUDGED_COLUMNS = (
    MeasurementRow.measurement_id,
    MeasurementRow.probe_id,
    MeasurementRow.domain,
    MeasurementRow.cc,
    MeasurementRow.asn,
    MeasurementRow.network_source,
    MeasurementRow.region,
    MeasurementRow.region_source,
    MeasurementRow.started_at,
    MeasurementRow.payload,
)


def _observed(payload: bytes) -> Observed:
    """The observations inside a stored signed document (validated at ingest), read."""
    try:
        document = json.loads(unpack_payload(payload))
        measurement = document.get("measurement") if isinstance(document, dict) else None
    except (ValueError, zlib.error):
        measurement = None
    return read(measurement if isinstance(measurement, dict) else {})


def _nearest(controls: Iterable[_Control], key: Callable[[_Control], float]) -> list[_Control]:
    """One control per vantage: the one with the smallest *key*."""
    best: dict[str, _Control] = {}
    for control in controls:
        current = best.get(control.probe_id)
        if current is None or key(control) < key(current):
            best[control.probe_id] = control
    return list(best.values())


def context_from(settings: CollectorSettings, geolocator: Geolocator | None) -> Context:
    """The analysis context a detection pass and a re-analysis judge with: the AS of
    an answer's address from *geolocator*, the lab's networks, the residual time."""

    def asn_of(ip: str) -> int | None:
        found = geolocator.lookup(ip) if geolocator is not None else None
        return found[1] or None if found else None

    return Context(asn_of=asn_of, lab_networks=settings.lab_network_list,
                   residual_seconds=settings.residual_seconds)  # fmt: skip


class Analyzer:
    """Judges the queue's measurements against their controls, batch by batch."""

    def __init__(self, settings: CollectorSettings, context: Context) -> None:
        self.settings = settings
        self.context = context

    def analyze_batch(self, session: Session, now: datetime, parsed: dict[int, Observed]) -> Judged:
        """The next batch of the queue: read, judged, its verdicts written.
        *parsed* caches control documents across the pass's batches."""
        rows = self._queued(session, now)
        if not rows:
            return Judged()
        judged = self.judge_rows(session, rows, parsed, now)
        self._write_verdicts(session, judged, now)
        return judged

    def judge_rows(
        self, session: Session, rows: Sequence[Any], parsed: dict[int, Observed], now: datetime
    ) -> Judged:
        """*rows* (``measurement_pk`` and JUDGED_COLUMNS) judged, nothing written:
        the queue's, or stored ones a re-analysis judges again."""
        if not rows:
            return Judged()
        docs = {row.measurement_pk: _observed(row.payload) for row in rows}
        evidence = self._evidence(session, rows, docs, parsed)
        return self._judge_batch(rows, docs, evidence, now)

    def _queued(self, session: Session, now: datetime) -> Sequence[Any]:
        """The queue's due measurements, oldest first, one batch."""
        m = MeasurementRow
        return session.execute(
            select(AnalysisQueueRow.measurement_pk, *JUDGED_COLUMNS)
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
    ) -> Judged:
        window = timedelta(seconds=self.settings.control_window_seconds)
        wait = timedelta(seconds=self.settings.control_wait_seconds)
        judged = Judged()
        for row in rows:
            doc = docs[row.measurement_pk]
            own = sni_triggers(doc)
            others = evidence.triggers.near(row.probe_id, doc, own)
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

    def _write_verdicts(self, session: Session, judged: Judged, now: datetime) -> None:
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
        for names in chunks(sorted(domains)):
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
    ) -> _Triggers:
        """SNI triggers per probe: stored ones within the residual time, and this batch's."""
        found = _Triggers()
        for row in rows:
            for trigger in sni_triggers(docs[row.measurement_pk]):
                found.add(row.probe_id, trigger)
        residual = timedelta(seconds=self.settings.residual_seconds)
        if not residual:
            return found
        probes = sorted({row.probe_id for row in rows})
        for names in chunks(probes):
            for probe_id, stored in session.execute(
                select(VerdictRow.probe_id, VerdictRow.triggers)
                .where(VerdictRow.probe_id.in_(names))
                .where(VerdictRow.started_at >= since - residual)
                # a literal: the partial index ix_verdicts_probe_triggers applies
                .where(VerdictRow.triggers != literal_column("'[]'"))
            ):
                for ip, port, at in json.loads(stored):
                    found.add(probe_id, Trigger(ip, int(port), datetime.fromisoformat(at)))
        return found


def _vantage_failing(rows: Sequence[Any], docs: dict[int, Observed]) -> set[int]:
    """Measurements whose probe's round mostly got no DNS answer at all: among the
    probe's measurements started within ROUND_SPREAD of it (itself included), at
    least VANTAGE_MIN, and half or more silent. Sorted by time with running counts
    of the silent ones, so a batch costs n log n, not n squared."""
    rounds: defaultdict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for row in rows:
        rounds[row.probe_id].append((row.started_at, dns_silent(docs[row.measurement_pk])))
    silent_before: dict[str, tuple[list[datetime], list[int]]] = {}
    for probe_id, seen in rounds.items():
        seen.sort(key=lambda pair: pair[0])
        counts = [0]
        for _, quiet in seen:
            counts.append(counts[-1] + quiet)
        silent_before[probe_id] = ([at for at, _ in seen], counts)
    found = set()
    for row in rows:
        times, counts = silent_before[row.probe_id]
        first = bisect.bisect_left(times, row.started_at - ROUND_SPREAD)
        last = bisect.bisect_right(times, row.started_at + ROUND_SPREAD)
        peers, silent_peers = last - first, counts[last] - counts[first]
        if peers >= VANTAGE_MIN and 2 * silent_peers >= peers:
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
        "network_source": row.network_source,
        "region": row.region,
        "region_source": row.region_source,
        "started_at": row.started_at,
        "flags": ",".join(sorted(verdict.flags)),
        "blocked": verdict.blocked,
        "reasons": json.dumps(list(verdict.reasons)),
        "triggers": json.dumps([[t.ip, t.port, t.at.isoformat()] for t in own]),
        "controls": json.dumps([c.measurement_id for c in used]),
        "rule_version": verdict.rule_version,
        "analyzed_at": now,
    }
