"""Collector fixtures: the same tests on SQLite and on a real PostgreSQL.

PostgreSQL runs at 127.0.0.1:5432 (user postgres, trust auth) on development
machines and in CI; each test run creates its own database and drops it at the
end; each test starts from empty tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from collector.api.app import create_app
from collector.core.db import make_engine, make_session_factory, migrate
from collector.core.settings import CollectorSettings, Mode
from tests.collector.helpers import ADMIN_TOKEN

PG_ADMIN_URL = os.environ.get(
    "BLOCKWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# The key sealing secrets at rest on PostgreSQL (collector/core/secrets.py): a test key.
TEST_SECRET_KEY = "dGVzdC1zZWFsaW5nLWtleS1ub3QtYS1zZWNyZXQtMDA="
# A public address the fake geolocator knows: where test requests come from.
CLIENT_IP = "202.96.134.133"  # a global address (never contacted: only a label)


class FakeGeolocator:
    def __init__(self, table: dict[str, tuple[str, int]] | None = None) -> None:
        self.table = table if table is not None else {CLIENT_IP: ("CN", 4134)}
        self.lookups = 0

    def lookup(self, ip: str) -> tuple[str, int] | None:
        self.lookups += 1
        return self.table.get(ip)


class FakeClock:
    def __init__(self) -> None:
        self.offset_seconds = 0.0

    def now(self) -> datetime:
        from datetime import timedelta

        return datetime.now(UTC) + timedelta(seconds=self.offset_seconds)


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own (empty, no schema), dropped afterwards.

    Raises when PostgreSQL is not there; ``postgres_url`` turns that into a skip
    outside CI."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        scratch = scratch_database("bw_test")
        url = scratch.__enter__()
    except Exception as exc:  # no PostgreSQL: fail in CI, skip on a laptop
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not available at {PG_ADMIN_URL}: {exc}")
    yield url
    scratch.__exit__(None, None, None)


@pytest.fixture
def sessions(settings: CollectorSettings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's database, migrated to head (tests add their own rows)."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _truncate(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
        ]
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/blockwatch.db"
    url: str = request.getfixturevalue("postgres_url")
    _truncate(url)
    return url


@pytest.fixture
def settings(database_url: str) -> CollectorSettings:
    return CollectorSettings(
        database_url=database_url,
        mode=Mode.LAB,
        admin_token=ADMIN_TOKEN,
        open_enrollment=False,
        probe_rate_limit=0,
        detector=False,  # tests of the detector run its passes themselves
        # SQLite keeps its sealing key in a file beside the database; PostgreSQL needs one.
        secret_key="" if database_url.startswith("sqlite") else TEST_SECRET_KEY,
    )


@pytest.fixture
def geolocator() -> FakeGeolocator:
    return FakeGeolocator()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(
    settings: CollectorSettings, geolocator: FakeGeolocator, clock: FakeClock
) -> Iterator[TestClient]:
    app = create_app(settings, geolocator=geolocator, clock=clock)
    with TestClient(app, client=(CLIENT_IP, 40000)) as test_client:
        yield test_client
