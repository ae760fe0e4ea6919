"""The check-in answer's ``seen_address``: echoed to the probe, kept nowhere, logged never."""

from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import column, create_engine, inspect, select, table

from collector.api.app import create_app
from collector.core.settings import CollectorSettings
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, TestProbe, enroll, measurement, token


def _as_text(value: Any) -> str:
    """A stored value as text; compressed blobs (the signed payloads) decompressed."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        with contextlib.suppress(zlib.error):
            raw = zlib.decompress(raw)
        return raw.decode("utf-8", "replace")
    return str(value)


def _database_text(url: str) -> str:
    """Every value of every table of the collector's database, as one text."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = inspect(conn).get_table_names()
            parts = []
            for name in names:
                columns = [column(c["name"]) for c in inspect(conn).get_columns(name)]
                rows = conn.execute(select(*table(name, *columns).c)).all()
                parts += [_as_text(v) for row in rows for v in row]
    finally:
        engine.dispose()
    return "\n".join(parts)


def test_the_checkin_answer_echoes_the_address_and_nothing_keeps_it(
    client: TestClient, settings: CollectorSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    probe = TestProbe()
    enrolled = client.post("/api/v1/probes/enroll", json=probe.enroll(token=token(client)))
    client.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN)
    answer = client.post("/api/v1/probes/checkin", json=probe.checkin())
    m = measurement()
    submitted = client.post("/api/v1/measurements", json={"measurements": [probe.measure(m)]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["seen_address"] == CLIENT_IP
    # Only in that answer: not in the enrollment's, not in the submission's.
    assert submitted.status_code == 200, submitted.text
    assert CLIENT_IP not in enrolled.text
    assert CLIENT_IP not in submitted.text
    stored = _database_text(settings.database_url)
    # The scan reads what was stored (the probe, its measurement), and no address.
    assert probe.key_id in stored
    assert m["measurement_id"] in stored
    assert CLIENT_IP not in stored
    assert not [r.getMessage() for r in caplog.records if CLIENT_IP in r.getMessage()]


def test_behind_a_trusted_reverse_proxy_it_is_the_forwarded_address(
    settings: CollectorSettings, geolocator: FakeGeolocator, clock: FakeClock
) -> None:
    proxied = settings.model_copy(update={"trusted_proxies": f"{CLIENT_IP}/32"})
    app = create_app(proxied, geolocator=geolocator, clock=clock)
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        probe = TestProbe()
        enroll(client, probe, token=token(client))
        answer = client.post(
            "/api/v1/probes/checkin",
            json=probe.checkin(),
            headers={"X-Forwarded-For": "198.51.100.23"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["seen_address"] == "198.51.100.23"
