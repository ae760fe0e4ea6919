"""Named leases: one collector process at a time runs a singleton loop.

Several replicas on one PostgreSQL (or several ``serve --workers`` processes on
one SQLite file) all start the control prober and the detector; only the
holder of the lease runs them. A lease is a row; taking it is one conditional
UPDATE (or an INSERT that loses cleanly to a concurrent one), so it works the
same on both databases. The holder renews it each round; if the holder dies,
another takes over when it expires.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from collector.core.models import LeaseRow


def acquire(session: Session, name: str, holder: str, ttl: float, now: datetime) -> bool:
    """Take or renew the lease *name* for *holder*; True when held. Commits."""
    expires = now + timedelta(seconds=ttl)
    taken = session.execute(
        update(LeaseRow)
        .where(LeaseRow.name == name)
        .where(or_(LeaseRow.holder == holder, LeaseRow.expires_at < now))
        .values(holder=holder, expires_at=expires)
        .returning(LeaseRow.name)
    ).scalar_one_or_none()
    if taken is not None:
        session.commit()
        return True
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # RETURNING, not rowcount: the driver may report -1 for a skipped conflict.
    created = session.execute(
        insert(LeaseRow)
        .values(name=name, holder=holder, expires_at=expires)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(LeaseRow.name)
    ).scalar_one_or_none()
    session.commit()
    return created is not None


def release(session: Session, name: str, holder: str) -> None:
    session.execute(
        update(LeaseRow)
        .where(LeaseRow.name == name, LeaseRow.holder == holder)
        .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
    )
    session.commit()
