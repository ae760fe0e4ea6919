"""History replayed: events from measurements older than the detector's window.

OONI's measurements of June, imported in December: the machine steps through
them in time order. An event history saw end is stored closed and alerts
nobody; one still going on is handed to the live detector and alerted once;
one that is the beginning of a live event moves that event's start back.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import session_scope
from collector.core.models import DetectorStateRow, EventChangeRow, EventRow
from collector.core.settings import CollectorSettings
from collector.detection.history import replay
from collector.services.ooni import Importer, read_file
from collector.services.targets import TargetService
from tests.collector.conftest import FakeClock

CORPUS = Path(__file__).resolve().parents[2] / "data" / "ooni"
DOMAIN = "mastodon.social"
BLOCKED = json.loads((CORPUS / "v05_tls_reset_mastodon_social.json").read_text())
REACHED = json.loads((CORPUS / "v05_success_https_mastodon_social.json").read_text())


def ooni(template: dict[str, Any], at: datetime, n: int) -> str:
    document = json.loads(json.dumps(template))
    document["measurement_start_time"] = at.strftime("%Y-%m-%d %H:%M:%S")
    document["measurement_uid"] = f"{at:%Y%m%d%H%M%S}.000000_CN_webconnectivity_{n:016x}"
    return json.dumps(document)


def history(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock,
    tmp_path: Path, series: list[tuple[dict[str, Any], datetime]],
) -> Any:  # fmt: skip
    path = tmp_path / "history.jsonl"
    path.write_text("".join(ooni(t, at, n) + "\n" for n, (t, at) in enumerate(series)))
    stats = Importer(settings, clock).run(sessions, read_file(path), lambda line: None)
    assert stats.stored == len(series)
    with session_scope(sessions) as s:
        return replay(s, stats.keys, settings, clock.now())


def lenient(settings: CollectorSettings) -> CollectorSettings:
    """OONI alone never opens an event at the defaults; an operator may ask it to."""
    return settings.model_copy(update={"open_min_probes": 1, "stay_min_probes": 1,
                                       "close_min_probes": 1})  # fmt: skip


def watch(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        TargetService().add(s, [DOMAIN])


def events(sessions: sessionmaker[Session]) -> list[tuple[str, bool, datetime, datetime | None]]:
    with session_scope(sessions) as s:
        return [(e.state, e.history, e.started_at, e.ended_at)
                for e in s.scalars(select(EventRow).order_by(EventRow.started_at))]  # fmt: skip


def changes(sessions: sessionmaker[Session]) -> list[str]:
    with session_scope(sessions) as s:
        return [c.kind for c in s.scalars(select(EventChangeRow))]


JUNE = datetime(2026, 6, 1, 10, 0)


def test_an_ended_block_is_history_and_alerts_nobody(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock, tmp_path: Path
) -> None:
    settings, hour = lenient(settings), timedelta(hours=1)
    watch(sessions)
    series = [(REACHED, JUNE), (BLOCKED, JUNE + hour), (BLOCKED, JUNE + 2 * hour),
              (REACHED, JUNE + 3 * hour)]  # fmt: skip
    stats = history(settings, sessions, clock, tmp_path, series)
    assert (stats.opened, stats.ended, stats.ongoing) == (1, 1, 0)
    [(state, from_history, started, ended)] = events(sessions)
    assert (state, from_history) == ("closed", True)
    assert started.replace(tzinfo=None) == JUNE + hour
    assert ended is not None and ended.replace(tzinfo=None) == JUNE + 3 * hour
    assert changes(sessions) == []  # it ended before the import: nobody is told
    # Replayed again (another import of the same key): derived again, not doubled.
    with session_scope(sessions) as s:
        again = replay(s, {(DOMAIN, "CN")}, settings, clock.now())
    assert again.opened == 1 and len(events(sessions)) == 1


def test_at_the_defaults_ooni_alone_opens_nothing_even_from_history(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock, tmp_path: Path
) -> None:
    watch(sessions)
    series = [(BLOCKED, JUNE + timedelta(hours=n)) for n in range(5)]
    stats = history(settings, sessions, clock, tmp_path, series)
    assert stats.opened == 0 and events(sessions) == []


def test_a_block_still_going_on_is_handed_to_the_live_detector_and_alerted_once(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock, tmp_path: Path
) -> None:
    settings = lenient(settings)
    watch(sessions)
    series = [(BLOCKED, JUNE + timedelta(days=n)) for n in range(3)]
    stats = history(settings, sessions, clock, tmp_path, series)
    assert (stats.opened, stats.ended, stats.ongoing) == (1, 0, 1)
    [(state, from_history, _started, _ended)] = events(sessions)
    assert (state, from_history) == ("open", True)
    assert changes(sessions) == ["opened"]
    with session_scope(sessions) as s:
        [event] = s.scalars(select(EventRow))
        detector = s.get(DetectorStateRow, (DOMAIN, "CN"))
        assert detector is not None and detector.event_id == event.id
        [change] = s.scalars(select(EventChangeRow))
        assert json.loads(change.snapshot)["history"] is True
    # Another import later: the open event is the live detector's now, not redone.
    more = [(BLOCKED, JUNE + timedelta(days=5))]
    path = tmp_path / "more.jsonl"
    path.write_text(ooni(*more[0], 99) + "\n")
    stats2 = Importer(settings, clock).run(sessions, read_file(path), lambda line: None)
    with session_scope(sessions) as s:
        replay(s, stats2.keys, settings, clock.now())
    assert len(events(sessions)) == 1 and changes(sessions) == ["opened"]


def test_history_around_an_event_someone_was_told_of_leaves_that_event_alone(
    settings: CollectorSettings, sessions: sessionmaker[Session], clock: FakeClock, tmp_path: Path
) -> None:
    """A live event of June 2 (its subscribers were alerted) stays as the live pass made
    it; history's blocks before and after it are stored, the one it covers is not."""
    from collector.detection.passes import new_event_row

    settings, hour, day = lenient(settings), timedelta(hours=1), timedelta(days=1)
    watch(sessions)
    with session_scope(sessions) as s:
        live = new_event_row(DOMAIN, "CN")
        live.state, live.scope, live.asns, live.methods = "closed", "national", "[4134]", '["tls"]'
        live.volunteers, live.evidence, live.reporting_probes = "[]", "[]", 3
        start = (JUNE + day).replace(tzinfo=clock.now().tzinfo)
        live.started_at = live.detected_at = live.updated_at = live.last_blocked_at = start
        live.ended_at = live.closed_at = start + 2 * hour
        s.add(live)
        s.flush()
        s.add(EventChangeRow(event_id=live.id, kind="opened", revision=1, at=start,
                             snapshot="{}"))  # fmt: skip
    series = []
    for base in (JUNE, JUNE + day, JUNE + 2 * day):
        series += [(REACHED, base), (BLOCKED, base + hour), (REACHED, base + 3 * hour)]
    stats = history(settings, sessions, clock, tmp_path, series)
    assert (stats.opened, stats.ended, stats.ongoing) == (2, 2, 0)
    stored = events(sessions)
    assert [(state, h) for state, h, _, _ in stored] == [("closed", True), ("closed", False),
                                                         ("closed", True)]  # fmt: skip
    assert stored[1][2].replace(tzinfo=None) == JUNE + day  # the live event, as it was
    with session_scope(sessions) as s:  # again: derived again, not doubled
        replay(s, {(DOMAIN, "CN")}, settings, clock.now())
    assert len(events(sessions)) == 3 and changes(sessions) == ["opened"]
