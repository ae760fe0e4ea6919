"""Retention: old measurements go, every event's evidence and its controls stay,
and the evidence bundle still verifies; a dry run deletes nothing."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from collector.cli import app
from collector.core.db import session_scope
from collector.core.models import MeasurementRow, VerdictRow
from collector.services import retention
from collector.services.retention import RetentionError, parse_retention, prune
from tests.collector.detection.test_pass import World, world  # noqa: F401  (the fixture)
from tests.collector.helpers import ADMIN


def count(w: World, table: Any) -> int:
    with session_scope(w.sessions) as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


def age_everything(w: World, days: int) -> None:
    with session_scope(w.sessions) as s:
        for row in s.scalars(select(MeasurementRow)):
            row.received_at -= timedelta(days=days)


@pytest.mark.parametrize("batch", [retention.BATCH, 3])  # 3: the batches are read on by id
def test_prune_keeps_the_evidence_and_its_controls(
    world: World,  # noqa: F811
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retention, "BATCH", batch)
    event = world.open_event()
    before = world.client.get(f"/api/v1/events/{event['id']}/evidence", headers=ADMIN).json()
    total = count(world, MeasurementRow)
    assert total == 8  # 3 ok, 3 blocked, 2 controls
    age_everything(world, 400)

    dry = prune(world.sessions, timedelta(days=180), world.now(), dry_run=True)
    assert (dry.deleted, dry.kept_as_evidence) == (4, 4) and count(world, MeasurementRow) == total

    report = prune(world.sessions, timedelta(days=180), world.now())
    # Kept: the 3 blocked measurements (the evidence) and the control they were judged by.
    assert (report.kept_as_evidence, report.deleted, report.remaining) == (4, 4, 4)
    assert count(world, VerdictRow) == 3  # the deleted ones' verdicts went with them
    after = world.client.get(f"/api/v1/events/{event['id']}/evidence", headers=ADMIN).json()
    # The bundle is whole: the same signed measurements, none unavailable.
    assert after["measurements"] == before["measurements"] and len(after["measurements"]) == 4
    statement = json.loads(base64.b64decode(after["statement"]))
    assert statement["unavailable"] == []
    # Nothing older is left to delete; a second prune is a no-op.
    again = prune(world.sessions, timedelta(days=180), world.now())
    assert (again.deleted, again.remaining) == (0, 4)


def test_recent_measurements_stay(world: World) -> None:  # noqa: F811
    world.open_event()
    report = prune(world.sessions, timedelta(days=1), world.now() + timedelta(hours=1))
    assert report.deleted == 0 and report.remaining == 8


@pytest.mark.parametrize(("text", "days"), [("180d", 180), ("26w", 182), ("72h", 3), (" 2D ", 2)])
def test_retention_durations(text: str, days: int) -> None:
    assert parse_retention(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "12", "1h", "23h", "3m", "-5d", "d"])
def test_retentions_refused(text: str) -> None:
    with pytest.raises(RetentionError):
        parse_retention(text)


def test_the_command_refuses_a_short_retention_and_dry_runs(
    settings: Any,
) -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["prune", "--retain", "2h", "--database-url",
                                  settings.database_url])  # fmt: skip
    assert refused.exit_code == 2 and "under a day" in refused.output
    dry = runner.invoke(app, ["prune", "--retain", "30d", "--dry-run", "--json",
                              "--database-url", settings.database_url])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert '"would_delete": 0' in dry.output
