"""What the pages show: instances x countries, and one instance's last 30 days.

Everything goes through the caller's ``Publication``: a country's state is the
worst of its networks as the public status folds them (small networks never
named), times rounded. The overview pages through the targets (``page``,
``per_page``) and filters them by a search string and a country, with the
instances that have an open event first; counts come from the same query, so
the page says how many there are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collector.core.models import EventRow, NetworkStateRow, TargetRow
from collector.core.publication import Publication, iso, worst_states
from collector.services.events import json_list
from collector.services.targets import COLLECTOR_KIND

TIMELINE_DAYS = 30


@dataclass(frozen=True, slots=True)
class Row:
    domain: str
    kind: str
    states: dict[str, str]  # cc -> state
    open_events: int


@dataclass(frozen=True, slots=True)
class Overview:
    rows: list[Row]
    countries: list[str]
    total: int
    page: int
    pages: int
    open_events: int
    mirrors: dict[str, list[tuple[str, dict[str, str]]]] = field(default_factory=dict)
    # The collector's own names blocked somewhere: (domain, cc, since), since rounded.
    collector_blocked: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Span:
    """An event drawn on the timeline: [start, end) within the window, in days from its start."""

    cc: str
    start: float
    end: float
    methods: tuple[str, ...]
    open: bool
    event_id: int


def country_states(rows: list[dict[str, Any]]) -> dict[str, str]:
    """cc -> the worst state of its network rows (``network_json``, public or not)."""
    return worst_states((row["cc"], row["state"]) for row in rows)


class OverviewService:
    def __init__(self, publication: Publication) -> None:
        self.publication = publication

    def overview(
        self,
        session: Session,
        *,
        search: str = "",
        cc: str | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> Overview:
        primary = select(TargetRow.domain, TargetRow.kind, TargetRow.group_id).where(
            TargetRow.enabled.is_(True),
            TargetRow.removed_at.is_(None),
            TargetRow.kind.not_in(("mirror", COLLECTOR_KIND)),  # the collector: a banner
        )
        if search:
            primary = primary.where(TargetRow.domain.contains(search.strip().lower()))
        open_counts = dict(
            session.execute(
                select(EventRow.domain, func.count())
                .where(EventRow.state == "open")
                .group_by(EventRow.domain)
            ).all()
        )
        targets = list(session.execute(primary))
        if cc:
            measured = set(
                session.scalars(select(NetworkStateRow.domain).where(NetworkStateRow.cc == cc))
            )
            targets = [t for t in targets if t.domain in measured]
        targets.sort(key=lambda t: (-open_counts.get(t.domain, 0), t.domain))
        total = len(targets)
        pages = max(1, -(-total // per_page))
        page = min(max(1, page), pages)
        shown = targets[(page - 1) * per_page : page * per_page]
        states = self._states(session, [t.domain for t in shown])
        rows = [
            Row(t.domain, t.kind, states.get(t.domain, {}), open_counts.get(t.domain, 0))
            for t in shown
        ]
        countries = sorted({c for row in rows for c in row.states} | ({cc} if cc else set()))
        return Overview(
            rows=rows,
            countries=countries,
            total=total,
            page=page,
            pages=pages,
            open_events=sum(open_counts.values()),
            mirrors=self._mirrors(session, shown),
            collector_blocked=self.collector_blocked(session),
        )

    def collector_blocked(self, session: Session) -> list[tuple[str, str, str]]:
        """Where the collector's own names are blocked, and since when (the earliest
        blocked network of the country, rounded as every public time)."""
        own = select(TargetRow.domain).where(
            TargetRow.kind == COLLECTOR_KIND, TargetRow.removed_at.is_(None)
        )
        query = (
            select(NetworkStateRow.domain, NetworkStateRow.cc, func.min(NetworkStateRow.since))
            .where(NetworkStateRow.domain.in_(own), NetworkStateRow.state == "blocked")
            .group_by(NetworkStateRow.domain, NetworkStateRow.cc)
            .order_by(NetworkStateRow.domain, NetworkStateRow.cc)
        )
        return [
            (domain, cc, self.publication.time(iso(since)) or iso(since))
            for domain, cc, since in session.execute(query)
        ]

    def _states(self, session: Session, domains: list[str]) -> dict[str, dict[str, str]]:
        """domain -> cc -> the worst state of its networks there (``worst_states``)."""
        found: dict[str, dict[str, str]] = defaultdict(dict)
        if not domains:
            return found
        columns = (NetworkStateRow.domain, NetworkStateRow.cc, NetworkStateRow.state)
        rows = session.execute(select(*columns).where(NetworkStateRow.domain.in_(domains)))
        pairs = (((domain, cc), state) for domain, cc, state in rows)
        for (domain, cc), state in worst_states(pairs).items():
            found[domain][cc] = state
        return found

    def _mirrors(
        self, session: Session, shown: list[Any]
    ) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """Each shown instance's mirrors (its group's other targets) and their states."""
        groups = {t.group_id for t in shown if t.group_id is not None}
        if not groups:
            return {}
        members = list(
            session.scalars(
                select(TargetRow).where(
                    TargetRow.group_id.in_(groups),
                    TargetRow.kind == "mirror",
                    TargetRow.removed_at.is_(None),
                )
            )
        )
        states = self._states(session, [m.domain for m in members])
        out: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for target in shown:
            mirrors = [m for m in members if m.group_id == target.group_id]
            if mirrors:
                out[target.domain] = [(m.domain, states.get(m.domain, {})) for m in mirrors]
        return out

    def timeline(self, session: Session, domain: str, now: datetime) -> list[Span]:
        """The domain's events of the last 30 days, clipped to the window."""
        start = now - timedelta(days=TIMELINE_DAYS)
        query = (
            select(EventRow)
            .where(EventRow.domain == domain)
            .where((EventRow.ended_at.is_(None)) | (EventRow.ended_at >= start))
            .order_by(EventRow.cc, EventRow.started_at)
        )
        spans = []
        day = timedelta(days=1)
        for event in session.scalars(query):
            began = max(event.started_at, start)
            ended = event.ended_at or now
            spans.append(
                Span(
                    cc=event.cc,
                    start=(began - start) / day,
                    end=max((min(ended, now) - start) / day, (began - start) / day + 0.02),
                    methods=tuple(str(m) for m in json_list(event.methods)),
                    open=event.state == "open",
                    event_id=event.id,
                )
            )
        return spans
