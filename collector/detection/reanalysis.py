"""Re-analysis: the current rules (and forged-address pool) over stored measurements.

``blockwatch-collector reanalyse [--since DATE] [--apply]`` judges every stored
probe measurement (and OONI's) again, a batch at a time by id, exactly as a
pass would (collector.detection.judging: the controls matched by time, the
residue, the vantage), and compares each verdict with the stored one. Without
``--apply`` it writes nothing and reports what would change: verdicts whose
flags change, those that become blocked or stop being blocked, and the
(domain, country) keys they touch. With ``--apply`` it writes the new verdicts
under the current rule version (the detector reads them in place of the old),
remembers how far it went (``cursors``: ``reanalyse:<rules version>``, so a run
stopped half-way goes on from there, and a finished one does nothing more),
then replays the touched keys' history (collector.detection.history: events
that ended before the run are derived again and alert nobody) and has the next
pass evaluate them (the window's events change as any pass changes them).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from collector.analysis import RULES_VERSION, Context, Observed
from collector.analysis.ooni import OONIFormatError, parse
from collector.core.db import session_scope
from collector.core.models import CursorRow, MeasurementRow, VerdictRow, unpack_payload
from collector.core.settings import CollectorSettings
from collector.detection.history import replay
from collector.detection.judging import JUDGED_COLUMNS, Analyzer, Key
from collector.services.geo import Geolocator
from collector.services.ooni import judge
from collector.services.volunteers import evaluate_soon
from probe_agent.protocol.inputs import parse_network

BATCH = 1000
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

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out["keys"] = len(self.keys)
        out["changes"] = dict(self.by_change.most_common())
        return out


def cursor_name() -> str:
    return f"reanalyse:{RULES_VERSION}"


class Reanalysis:
    def __init__(self, settings: CollectorSettings, geolocator: Geolocator | None = None) -> None:
        self.settings = settings
        networks = tuple(parse_network(n) for n in settings.lab_networks.split(",") if n.strip())
        self.lab_networks = networks

        def asn_of(ip: str) -> int | None:
            found = geolocator.lookup(ip) if geolocator is not None else None
            return found[1] or None if found else None

        context = Context(
            asn_of=asn_of, lab_networks=networks, residual_seconds=settings.residual_seconds
        )
        self.analyzer = Analyzer(settings, context)

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
                rows = self._batch(session, last, since)
                if not rows:
                    break
                new = self._judge(session, rows, parsed)
                self._compare(session, rows, new, stats, apply)
                last = rows[-1].measurement_pk
                if apply:
                    self._advance(session, last)
            progress(len(rows))
        if apply and stats.keys:
            with session_scope(sessions) as session:
                replay(session, stats.keys, self.settings, now or datetime.now(UTC))
                evaluate_soon(session, stats.keys)
        return stats

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

    def _batch(self, session: Session, after: int, since: datetime | None) -> list[Any]:
        m = MeasurementRow
        query = (
            select(m.id.label("measurement_pk"), *JUDGED_COLUMNS, m.source)
            .join(VerdictRow, VerdictRow.measurement_pk == m.id)
            .where(m.id > after, m.role.in_(("probe", "ooni")))
            .order_by(m.id)
            .limit(BATCH)
        )
        if since is not None:
            query = query.where(m.started_at >= since)
        return list(session.execute(query).all())

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
            new[row.measurement_pk] = {
                "flags": ",".join(sorted(verdict.flags)),
                "blocked": verdict.blocked,
                "reasons": json.dumps(list(verdict.reasons)),
                "triggers": "[]",
                "controls": "[]",
                "rule_version": verdict.rule_version,
            }
        return new

    def _compare(
        self,
        session: Session,
        rows: list[Any],
        new: dict[int, dict[str, object]],
        stats: ReanalysisStats,
        apply: bool,
    ) -> None:
        pks = [int(r.measurement_pk) for r in rows]
        old = {
            v.measurement_pk: v
            for v in session.scalars(select(VerdictRow).where(VerdictRow.measurement_pk.in_(pks)))
        }
        for pk in pks:
            fresh, stored = new.get(pk), old.get(pk)
            if fresh is None or stored is None:
                continue
            stats.judged += 1
            if fresh["flags"] != stored.flags:
                stats.changed += 1
                stats.by_change[f"{stored.flags} -> {fresh['flags']}"] += 1
                stats.now_blocked += bool(fresh["blocked"]) and not stored.blocked
                stats.no_longer_blocked += stored.blocked and not fresh["blocked"]
                stats.keys.add((stored.domain, stored.cc))
            elif fresh["reasons"] != stored.reasons:
                stats.reasons_changed += 1
            else:
                stats.unchanged += 1
            if apply and (fresh["flags"], fresh["reasons"], RULES_VERSION) != (
                stored.flags, stored.reasons, stored.rule_version
            ):  # fmt: skip
                session.execute(
                    update(VerdictRow)
                    .where(VerdictRow.id == stored.id)
                    .values(
                        flags=fresh["flags"],
                        blocked=fresh["blocked"],
                        reasons=fresh["reasons"],
                        triggers=fresh["triggers"],
                        controls=fresh["controls"],
                        rule_version=RULES_VERSION,
                    )
                )
                stats.written += 1
