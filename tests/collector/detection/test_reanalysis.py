"""``reanalyse``: the current rules over stored measurements; a report, or (--apply) the
new verdicts, resumably, once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from collector.analysis import RULES_VERSION
from collector.cli import app
from collector.core.db import session_scope
from collector.core.models import CursorRow, VerdictRow
from collector.core.settings import CollectorSettings
from collector.detection.reanalysis import Reanalysis, cursor_name
from tests.collector.conftest import FakeClock
from tests.collector.detection.test_pass import World


@pytest.fixture
def world(client: TestClient, settings: CollectorSettings, clock: FakeClock) -> Any:
    w = World(client, settings, clock)
    w.open_event()  # 3 probes ok then SNI-blocked, judged against 2 controls
    yield w
    w.engine.dispose()


def stored(world: World) -> list[tuple[str, str, str]]:
    with session_scope(world.sessions) as s:
        return [(v.flags, v.reasons, v.rule_version)
                for v in s.scalars(select(VerdictRow).order_by(VerdictRow.id))]  # fmt: skip


def test_the_same_rules_change_nothing(world: World, settings: CollectorSettings) -> None:
    before = stored(world)
    stats = Reanalysis(settings).run(world.sessions, None, apply=False)
    assert (stats.judged, stats.unchanged, stats.changed) == (6, 6, 0)
    assert stored(world) == before


def test_older_verdicts_are_reported_then_rewritten_once(
    world: World, settings: CollectorSettings, clock: FakeClock
) -> None:
    right = stored(world)
    with session_scope(world.sessions) as s:  # verdicts an older rule version wrote
        s.execute(update(VerdictRow).values(flags="unknown", blocked=False,
                                            reasons='["unknown.unexplained"]',
                                            rule_version="2026.11.1"))  # fmt: skip
    dry = Reanalysis(settings).run(world.sessions, None, apply=False)
    assert (dry.judged, dry.changed, dry.now_blocked, dry.written) == (6, 6, 3, 0)
    assert dry.by_change == {"unknown -> ok": 3, "unknown -> dns,tls": 3}
    assert {v[2] for v in stored(world)} == {"2026.11.1"}  # a dry run writes nothing
    applied = Reanalysis(settings).run(world.sessions, None, apply=True, now=clock.now())
    assert (applied.changed, applied.written) == (6, 6)
    assert stored(world) == right and {v[2] for v in right} == {RULES_VERSION}
    with session_scope(world.sessions) as s:
        cursor = s.get(CursorRow, cursor_name())
        assert cursor is not None and cursor.position > 0
    # Resumable and idempotent: the finished run has nothing left to do.
    again = Reanalysis(settings).run(world.sessions, None, apply=True, now=clock.now())
    assert again.judged == 0
    # The event stays what the detector made of the right verdicts.
    assert len(world.events(state="open")) == 1


def test_the_command(world: World, settings: CollectorSettings) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["reanalyse", "--json", "--database-url", settings.database_url])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["judged"] == 6 and summary["changed"] == 0 and summary["written"] == 0
    bad = runner.invoke(app, ["reanalyse", "--since", "June", "--database-url",
                              settings.database_url])  # fmt: skip
    assert bad.exit_code == 2


def test_oonis_measurements_are_judged_again_from_their_own_control(
    settings: CollectorSettings, sessions: Any, clock: FakeClock
) -> None:
    from pathlib import Path

    from collector.services.ooni import Importer, read_file

    corpus = Path(__file__).resolve().parents[2] / "data" / "ooni" / "mixed.jsonl"
    lines: list[dict[str, Any]] = []
    stats = Importer(settings, clock, add_targets=True).run(sessions, read_file(corpus),
                                                           lines.append)  # fmt: skip
    with session_scope(sessions) as s:
        s.execute(update(VerdictRow).values(flags="unknown", rule_version="2026.11.1"))
    dry = Reanalysis(settings).run(sessions, None, apply=False)
    assert dry.judged == stats.stored
    # Every one whose verdict is not "unknown" changes back to what the import judged.
    assert dry.changed == sum(1 for line in lines if line["verdict"]["flags"] != ["unknown"])
    assert dry.changed > 0 and dry.changed + dry.unchanged + dry.reasons_changed == stats.stored
    # Applied, each is written as the import wrote it: OONI's test helper as its control.
    with session_scope(sessions) as s:
        imported = {v.measurement_id: v.controls for v in s.scalars(select(VerdictRow))}
    Reanalysis(settings).run(sessions, None, apply=True, now=clock.now())
    with session_scope(sessions) as s:
        assert {v.measurement_id: v.controls for v in s.scalars(select(VerdictRow))} == imported
    assert '["ooni-test-helper"]' in imported.values()


def set_verdicts(world: World, flags: str, blocked: bool, where: str | None = None) -> None:
    """Verdicts an older rule version wrote: every one, or those whose flags were *where*."""
    with session_scope(world.sessions) as s:
        query = update(VerdictRow).values(flags=flags, blocked=blocked, rule_version="2026.11.1")
        if where is not None:
            query = query.where(VerdictRow.flags == where)
        s.execute(query)


def test_an_event_the_old_rules_missed_would_open(world: World, settings: CollectorSettings,
                                                  clock: FakeClock) -> None:  # fmt: skip
    set_verdicts(world, "unknown", False)
    dry = Reanalysis(settings).run(world.sessions, None, apply=False, now=clock.now())
    [change] = dry.events
    assert (change.kind, change.before) == ("open", None)
    assert change.after is not None and change.after.event.methods == ("dns", "tls")
    assert dry.to_json()["events"] == {"open": 1, "close": 0, "change": 0}
    # Applied: the live event is that event; nothing doubles, nobody is alerted again.
    applied = Reanalysis(settings).run(world.sessions, None, apply=True, now=clock.now())
    assert [c.kind for c in applied.events] == ["open"]
    assert len(world.events()) == 1


def test_methods_the_old_rules_named_otherwise_change(world: World, settings: CollectorSettings,
                                                     clock: FakeClock) -> None:  # fmt: skip
    set_verdicts(world, "tls", True, where="dns,tls")
    dry = Reanalysis(settings).run(world.sessions, None, apply=False, now=clock.now())
    [change] = dry.events
    assert change.kind == "change" and change.before and change.after
    assert (change.before.event.methods, change.after.event.methods) == (("tls",), ("dns", "tls"))
    assert "-> " in change.describe() and "dns,tls" in change.describe()


def test_an_outage_the_old_rules_called_a_block_would_close(
    client: TestClient, settings: CollectorSettings, clock: FakeClock
) -> None:
    from datetime import timedelta

    from tests.collector.analysis import builders as b

    world = World(client, settings, clock)
    try:
        t = world.now() - timedelta(minutes=2)
        world.round(b.reached(), t)
        world.submit(world.control, b.control(), t + timedelta(seconds=5))
        world.clock.offset_seconds += 60
        world.run()
        assert world.events() == []
        set_verdicts(world, "tcp_ip", True)  # the old rules saw a block
        dry = Reanalysis(settings).run(world.sessions, None, apply=False, now=clock.now())
        [change] = dry.events
        assert (change.kind, change.after) == ("close", None)
        assert change.before is not None and change.before.event.methods == ("tcp_ip",)
        done = CliRunner().invoke(app, ["reanalyse", "--database-url", settings.database_url])
        assert done.exit_code == 0, done.output
        assert "events: 0 would open, 1 would close, 0 would change" in done.output
        assert "  close   alive.bar CN" in done.output
    finally:
        world.engine.dispose()


def test_a_measurement_not_judged_yet_is_left_to_the_queue(
    world: World, settings: CollectorSettings
) -> None:
    with session_scope(world.sessions) as s:
        first = s.scalars(select(VerdictRow).order_by(VerdictRow.id)).first()
        assert first is not None
        s.delete(first)
    dry = Reanalysis(settings).run(world.sessions, None, apply=False)
    assert (dry.judged, dry.changed) == (5, 0)
