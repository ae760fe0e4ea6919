"""What the collector's commands share: the error console, exit statuses, sessions.

Administration commands work on the database directly, through the same
services as the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import make_engine, make_session_factory, migrate
from collector.core.errors import CollectorError
from collector.core.settings import CollectorSettings

err = Console(stderr=True)
EXIT_INVALID = 2


def fail(exc: CollectorError) -> typer.Exit:
    """Report a service's refusal: exit status 2 for the operator's mistakes, 1 for ours."""
    err.print(f"[bold red]error:[/] {exc.message} ({exc.code})", highlight=False)
    return typer.Exit(EXIT_INVALID if exc.status < 500 else 1)


def invalid(message: str) -> typer.Exit:
    """Report an invalid command line: exit status 2."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_INVALID)


@contextmanager
def sessions(settings: CollectorSettings) -> Iterator[sessionmaker[Session]]:
    """A migrated database's session factory, its engine disposed of on the way out."""
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def short_time(value: str | None) -> str:
    """An ISO timestamp to the second, for tables."""
    return value[:19].replace("T", " ") if value else "-"
