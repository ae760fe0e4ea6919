"""Fixtures of the service tests: a migrated database on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import make_engine, make_session_factory, migrate
from collector.core.settings import CollectorSettings


@pytest.fixture
def sessions(settings: CollectorSettings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's database, migrated to head (tests add their own rows)."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()
