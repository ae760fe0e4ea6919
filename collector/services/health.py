"""Is this collector process fit to take traffic: ``GET /readyz``'s checks.

- **database**: one ``SELECT`` answers within the timeout;
- **schema**: the database's Alembic revision is at least ``REQUIRED_SCHEMA``,
  the oldest this code can run on. A revision this code does not know was
  written by newer code: ready all the same, because migrations are
  expand-then-contract (a release adds columns and tables that the previous
  one ignores, and drops what it stopped using only a release later), so old
  replicas keep serving while a rolling upgrade migrates under them;
- **loops**: the background loops still run, and on the holder of the
  ``singletons`` lease the lease is fresh (a holder whose pass hangs past the
  lease's lifetime has lost it to another replica: it is not alive).

``GET /healthz`` asks nothing of this: the process answers, that is all (a
liveness probe that checked the database would restart every replica when the
database blinks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from collector.core.db import alembic_config

# The oldest schema this code runs on: bump it in the release whose code first
# reads what a migration adds (never in the release that adds it, see above).
REQUIRED_SCHEMA = "0010"


class LoopsView(Protocol):
    """What readiness asks of the background loops (collector.detection.loops)."""

    def liveness(self) -> str | None:
        """None when alive, else why not."""
        ...


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else "not ready", "checks": self.checks}


@cache
def _known_revisions() -> tuple[str, ...]:
    """Every revision this code ships, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return tuple(reversed([r.revision for r in script.walk_revisions()]))


def schema_problem(revision: str | None) -> str | None:
    """Why the database's *revision* is too old for this code, or None."""
    known = _known_revisions()
    if revision is None:
        return "the database has no schema (run `blockwatch-collector migrate`)"
    if revision not in known:
        return None  # newer code migrated it: expand-then-contract keeps us working
    if known.index(revision) < known.index(REQUIRED_SCHEMA):
        return f"schema {revision} is older than {REQUIRED_SCHEMA}, which this code needs"
    return None


def database_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        try:
            row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
        except SQLAlchemyError:
            connection.rollback()
            connection.execute(text("SELECT 1"))  # reachable, and no schema at all
            return None
    return str(row[0]) if row is not None else None


def readiness(engine: Engine, loops: LoopsView | None) -> Readiness:
    checks: dict[str, Any] = {}
    try:
        revision = database_revision(engine)
    except SQLAlchemyError as exc:
        checks["database"] = "unreachable"
        return Readiness(False, checks, f"database unreachable ({type(exc).__name__})")
    checks["database"] = "ok"
    checks["schema"] = {"revision": revision, "required": REQUIRED_SCHEMA}
    problem = schema_problem(revision)
    if problem is None and loops is not None:
        problem = loops.liveness()
        checks["loops"] = "ok" if problem is None else "stalled"
    elif loops is None:
        checks["loops"] = "off"
    return Readiness(problem is None, checks, problem)
