"""``/healthz`` (the process answers) and ``/readyz`` (database reachable, schema
new enough, background loops alive), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from collector.api.app import create_app
from collector.core.db import make_engine
from collector.core.settings import CollectorSettings
from collector.detection.loops import BackgroundLoops
from collector.services import health
from tests.collector.conftest import FakeClock, FakeGeolocator


def ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


def set_revision(client: TestClient, revision: str | None) -> None:
    with client.app.state.engine.begin() as connection:  # type: ignore[attr-defined]
        connection.execute(text("DELETE FROM alembic_version"))
        if revision is not None:
            connection.execute(
                text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": revision}
            )


def test_healthz_and_readyz_on_a_migrated_database(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    status, body = ready(client)
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["schema"]["required"] == health.REQUIRED_SCHEMA
    assert body["checks"]["loops"] == "off"  # this fixture runs no detector


def test_a_schema_older_than_the_code_needs_is_not_ready_a_newer_one_is(
    client: TestClient,
) -> None:
    head = health._known_revisions()[-1]
    try:
        set_revision(client, "0006")
        status, body = ready(client)
        assert status == 503
        assert body["error"]["code"] == "err_not_ready"
        assert "older than" in body["error"]["message"]
        # A revision this code does not know was written by newer code (expand-then-
        # contract): an old replica stays ready during a rolling upgrade.
        set_revision(client, "0042_from_a_later_release")
        assert ready(client)[0] == 200
        set_revision(client, None)
        status, body = ready(client)
        assert status == 503 and "no schema" in body["error"]["message"]
    finally:
        set_revision(client, head)  # the next test's database is truncated, not migrated


def test_an_unreachable_database_is_not_ready_and_healthz_still_answers(
    client: TestClient,
) -> None:
    good = client.app.state.engine  # type: ignore[attr-defined]
    client.app.state.engine = make_engine("postgresql://postgres@127.0.0.1:1/none")  # type: ignore[attr-defined]
    try:
        status, body = ready(client)
        assert status == 503 and body["checks"]["database"] == "unreachable", body
        assert client.get("/healthz").status_code == 200
    finally:
        client.app.state.engine = good  # type: ignore[attr-defined]


def test_the_loops_alive_on_the_lease_holder(
    settings: CollectorSettings, geolocator: FakeGeolocator, clock: FakeClock
) -> None:
    live = settings.model_copy(update={"detector": True, "no_control": True})
    app = create_app(live, geolocator=geolocator, clock=clock)
    with TestClient(app) as client:
        loops: BackgroundLoops = app.state.loops
        deadline = time.monotonic() + 20
        while not loops.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loops.held  # alone: it holds the lease
        status, body = ready(client)
        assert status == 200 and body["checks"]["loops"] == "ok", body
        # A holder that stopped renewing (a pass hanging past the lease's life).
        renewed = loops.renewed_at
        loops.renewed_at = time.monotonic() - 10 * loops.lease_ttl
        status, body = ready(client)
        assert status == 503 and "not renewed its lease" in body["error"]["message"]
        loops.renewed_at = renewed
        # A loop that ended.
        task = loops._alerts_task
        assert task is not None
        client.portal.call(_cancel, task)  # type: ignore[union-attr]
        status, body = ready(client)
        assert status == 503 and body["error"]["message"] == "the alerts loop has stopped"


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_schema_problem_against_the_shipped_revisions() -> None:
    assert health.schema_problem(health.REQUIRED_SCHEMA) is None
    assert health.schema_problem("0001") is not None
    assert health.schema_problem(None) is not None
    known = health._known_revisions()
    assert known[0] == "0001" and health.REQUIRED_SCHEMA in known  # oldest first
