"""Backups as the operator guide says: ``pg_dump -Fc``, then ``pg_restore`` into an
empty database; a collector on the restored copy is ready and serves the same
events, status and evidence measurements."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector.api.app import create_app
from collector.core.settings import CollectorSettings
from tests.collector.analysis import builders as b
from tests.collector.conftest import FakeClock, FakeGeolocator, scratch_database
from tests.collector.detection.test_pass import World, world  # noqa: F401  (the fixture)
from tests.collector.helpers import ADMIN

pytestmark = pytest.mark.integration


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_pg_dump_and_restore_give_the_same_collector(
    world: World,  # noqa: F811
    settings: CollectorSettings,
    geolocator: FakeGeolocator,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("pg_dump backs up PostgreSQL (SQLite: copy the file with sqlite3 .backup)")
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    t = world.now() - timedelta(minutes=2)
    world.round(b.sni_blocked(), t)
    world.submit(world.control, b.control(), t + timedelta(seconds=3))
    world.clock.offset_seconds += 60
    world.run()
    [event] = world.events(state="open")
    paths = ["/api/v1/events?limit=100", f"/api/v1/status/{b.DOMAIN}",
             f"/api/v1/events/{event['id']}/evidence"]  # fmt: skip
    before = {p: world.client.get(p, headers=ADMIN).json() for p in paths}

    dump = tmp_path / "blockwatch.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), libpq(settings.database_url)],
                   check=True, timeout=120)  # fmt: skip
    with scratch_database("bw_restore") as restored_url:
        subprocess.run(["pg_restore", "--no-owner", "-d", libpq(restored_url), str(dump)],
                       check=True, timeout=120)  # fmt: skip
        restored = settings.model_copy(update={"database_url": restored_url})
        app = create_app(restored, geolocator=geolocator, clock=clock)
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
            after = {p: client.get(p, headers=ADMIN).json() for p in paths}
    assert after[paths[0]] == before[paths[0]] and after[paths[1]] == before[paths[1]]
    bundle, again = before[paths[2]], after[paths[2]]
    # The probes' signed measurements, byte for byte. The collector's key is not in
    # the database (--key-file): a backup that loses it loses the signer (the guide says so).
    assert again["measurements"] == bundle["measurements"] and bundle["measurements"]
