"""What the network sees, as Prometheus gauges, set at the end of every pass.

Only the lease holder runs passes, so only it sets these (under ``serve
--workers`` every worker's values are merged, ``mostrecent`` wins). Labels stay
bounded and k-anonymous (collector/core/metrics.py): a target's state is per
country (its networks folded, the worst first, as the public status folds
small networks); probes reporting are per country, and per network only for
networks with at least ``--publish-min-volunteers`` volunteers.

- ``blockwatch_target_state{domain, cc, kind}``: 0 ok, 1 unknown, 2 down,
  3 blocked (the worst of the country's networks). ``domain`` is a label here
  and nowhere else: targets are public and bounded by the operator's list.
- ``blockwatch_open_events{cc}`` and ``blockwatch_open_events_by_method{cc, method}``.
- ``blockwatch_probes_reporting{cc}`` and ``..._network{cc, asn}``: volunteers
  whose probes checked in within the detector's window.
- ``blockwatch_analysis_backlog``, ``blockwatch_analysis_oldest_seconds`` (the
  oldest measurement still waiting for a verdict: the detector's lag, most of
  it the wait for a control taken after it), ``blockwatch_volume_collapses``.

A series that no longer applies (a target removed, an event closed) is set to
its empty value (0, or removed for the target state); in multiprocess mode a
removed series stays until the process restarts (prometheus_client keeps it in
its files).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collector.core import metrics
from collector.core.models import (
    AnalysisQueueRow,
    DetectorStateRow,
    EventRow,
    MeasurementRow,
    NetworkStateRow,
    TargetRow,
)
from collector.core.publication import worst_states
from collector.core.settings import CollectorSettings
from collector.services.volunteers import reporting

STATE_VALUES = {"ok": 0, "unknown": 1, "down": 2, "blocked": 3}


class Gauges:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self._states: set[tuple[str, str, str]] = set()
        self._networks: set[tuple[str, str]] = set()

    def update(self, session: Session, now: datetime) -> None:
        self._backlog(session, now)
        self._events(session)
        self._target_states(session)
        self._probes(session, now)

    def _backlog(self, session: Session, now: datetime) -> None:
        count, oldest = session.execute(
            select(func.count(), func.min(MeasurementRow.received_at))
            .select_from(AnalysisQueueRow)
            .join(MeasurementRow, MeasurementRow.id == AnalysisQueueRow.measurement_pk)
        ).one()
        metrics.ANALYSIS_BACKLOG.set(count or 0)
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        metrics.ANALYSIS_OLDEST.set(max(0.0, age))
        metrics.VOLUME_COLLAPSES.set(
            session.scalar(
                select(func.count())
                .select_from(DetectorStateRow)
                .where(DetectorStateRow.collapsed_at.is_not(None))
            )
            or 0
        )

    def _events(self, session: Session) -> None:
        by_cc: dict[tuple[str, ...], int] = defaultdict(int)
        by_method: dict[tuple[str, ...], int] = defaultdict(int)
        open_events = select(EventRow.cc, EventRow.methods).where(EventRow.state == "open")
        for cc, methods in session.execute(open_events):
            by_cc[(cc,)] += 1
            for method in json.loads(methods or "[]"):
                by_method[(cc, str(method))] += 1
        for (cc,), count in _with_zeros(metrics.OPEN_EVENTS, by_cc, ("cc",)).items():
            metrics.OPEN_EVENTS.labels(cc=cc).set(count)
        pairs = _with_zeros(metrics.OPEN_EVENTS_BY_METHOD, by_method, ("cc", "method"))
        for (cc, method), count in pairs.items():
            metrics.OPEN_EVENTS_BY_METHOD.labels(cc=cc, method=method).set(count)

    def _target_states(self, session: Session) -> None:
        live = select(TargetRow.domain, TargetRow.kind).where(
            TargetRow.enabled.is_(True), TargetRow.removed_at.is_(None)
        )
        kinds: dict[str, str] = {domain: kind for domain, kind in session.execute(live)}
        query = select(NetworkStateRow.domain, NetworkStateRow.cc, NetworkStateRow.state)
        worst = worst_states(
            ((domain, cc), state) for domain, cc, state in session.execute(query) if domain in kinds
        )
        seen = set()
        for (domain, cc), state in worst.items():
            labels = (domain, cc, str(kinds[domain]))
            seen.add(labels)
            metrics.TARGET_STATE.labels(*labels).set(STATE_VALUES.get(state, 1))
        for labels in self._states - seen:
            metrics.TARGET_STATE.remove(*labels)
        self._states = seen

    def _probes(self, session: Session, now: datetime) -> None:
        since = now - timedelta(seconds=self.settings.window_seconds)
        found = reporting(session, since)
        counts: dict[tuple[str, ...], int] = {(cc,): len(v) for cc, v in found.countries.items()}
        for (cc,), count in _with_zeros(metrics.PROBES_REPORTING, counts, ("cc",)).items():
            metrics.PROBES_REPORTING.labels(cc=cc).set(count)
        # A network is named from K volunteers on; one that falls below K loses its
        # series (a 0 would say "fewer than K here").
        named = {
            (cc, str(asn)): n
            for (cc, asn), n in found.named(self.settings.publish_min_volunteers).items()
        }
        for (cc, label), count in named.items():
            metrics.PROBES_REPORTING_NETWORK.labels(cc=cc, asn=label).set(count)
        for gone in self._networks - set(named):
            metrics.PROBES_REPORTING_NETWORK.remove(*gone)
        self._networks = set(named)


def _with_zeros(
    gauge: Gauge, current: dict[tuple[str, ...], int], names: tuple[str, ...]
) -> dict[tuple[str, ...], int]:
    """*current*, plus a 0 for each series of *gauge* set before and absent now."""
    out = dict(current)
    for sample in next(iter(gauge.collect())).samples:
        key = tuple(sample.labels.get(name, "") for name in names)
        if all(key) and key not in out:
            out[key] = 0
    return out
