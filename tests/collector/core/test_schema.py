"""The migrations build exactly the schema the models declare, on both databases,
and every migration goes down and up again."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from collector.core.db import alembic_config, migrate
from collector.core.models import Base


def _differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_migrations_build_the_models_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    assert _differences(database_url) == []


def test_every_migration_goes_down_and_up(database_url: str) -> None:
    engine = create_engine(database_url)
    config = alembic_config()
    try:
        migrate(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
        indexes = {i["name"] for i in inspect(engine).get_indexes("verdicts")}
        assert "ix_verdicts_domain_cc_started" in indexes
        assert "ix_verdicts_domain_started" not in indexes
        assert _differences(database_url) != []  # the comparison sees a missing index
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert "verdicts" not in inspect(engine).get_table_names()
        migrate(engine)
    finally:
        engine.dispose()
    assert _differences(database_url) == []
