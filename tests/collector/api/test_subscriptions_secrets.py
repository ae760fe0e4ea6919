"""Secrets through the API: shown once on creation and rotation, never stored or listed
in clear; a collector whose sealing key is malformed refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from collector.api.app import create_app
from collector.core.secrets import KEY_FILE_NAME, SecretKeyError
from collector.core.settings import CollectorSettings, Mode
from tests.collector.conftest import FakeGeolocator
from tests.collector.helpers import ADMIN, ADMIN_TOKEN

HOOK = "https://hooks.example/T0/B0/XyZsecretpath"


def stored(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT settings, secret, previous_secret FROM subscriptions"))
            return " ".join(str(v) for row in rows for v in row)
    finally:
        engine.dispose()


def test_secrets_are_shown_once_and_stored_sealed(client: TestClient, database_url: str) -> None:
    assert client.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN).is_success
    created = client.post(
        "/api/v1/subscriptions", json={"domain": "alive.bar", "url": HOOK}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    first = created.json()["secret"]
    assert first.startswith("whsec_")
    sub_id = created.json()["id"]
    rotated = client.post(f"/api/v1/subscriptions/{sub_id}/rotate-secret", headers=ADMIN)
    assert rotated.status_code == 200
    second = rotated.json()["secret"]
    assert second.startswith("whsec_") and second != first
    on_disk = stored(database_url)
    for clear in (first, second, first[6:], second[6:], "XyZsecretpath"):
        assert clear not in on_disk
    shown = client.get(f"/api/v1/subscriptions/{sub_id}", headers=ADMIN).text
    listed = client.get("/api/v1/subscriptions", headers=ADMIN).text
    assert "whsec_" not in shown + listed and "bws1:" not in shown + listed
    assert client.get(f"/api/v1/subscriptions/{sub_id}", headers=ADMIN).json()["settings"] == {
        "url": HOOK
    }


def test_a_malformed_key_refuses_the_start(tmp_path: Path) -> None:
    settings = CollectorSettings(
        database_url=f"sqlite:///{tmp_path}/b.db", mode=Mode.LAB, admin_token=ADMIN_TOKEN,
        detector=False, secret_key="0123456789",
    )  # fmt: skip
    with (
        pytest.raises(SecretKeyError, match="not a Fernet key"),
        TestClient(create_app(settings, geolocator=FakeGeolocator())),
    ):
        pass


def test_a_lone_instance_in_production_makes_its_key_file_at_start(tmp_path: Path) -> None:
    settings = CollectorSettings(
        database_url=f"sqlite:///{tmp_path}/b.db", admin_token=ADMIN_TOKEN, detector=False,
        key_file=tmp_path / "collector-key.pem",
    )  # fmt: skip
    assert settings.mode is Mode.PRODUCTION
    with TestClient(create_app(settings, geolocator=FakeGeolocator())) as client:
        assert client.get("/healthz").status_code == 200
    assert (tmp_path / KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600
