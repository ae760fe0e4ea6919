"""detection indexes: the pass reads the window, never the history

The votes query (``domain IN (...) AND started_at >= window``) could not use
``(domain, cc, started_at)`` for the time and scanned every stored verdict; the
controls and SNI-trigger queries walked every probe row of the time range. See
docs/architecture.md, "Cost of a pass". On a large PostgreSQL database this
migration builds four indexes (minutes for tens of millions of rows) and holds
a write lock on ``verdicts`` and ``measurements`` meanwhile: ingestion waits.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 21:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_measurements_controls",
        "measurements",
        ["domain", "started_at"],
        unique=False,
        postgresql_where=sa.text("role = 'control'"),
        sqlite_where=sa.text("role = 'control'"),
    )
    op.create_index(
        "ix_verdicts_domain_started", "verdicts", ["domain", "started_at"], unique=False
    )
    op.create_index("ix_verdicts_started", "verdicts", ["started_at"], unique=False)
    op.create_index(
        "ix_verdicts_probe_triggers",
        "verdicts",
        ["probe_id", "started_at"],
        unique=False,
        postgresql_where=sa.text("triggers <> '[]'"),
        sqlite_where=sa.text("triggers <> '[]'"),
    )
    op.drop_index("ix_verdicts_domain_cc_started", table_name="verdicts")
    op.drop_index("ix_verdicts_probe_started", table_name="verdicts")


def downgrade() -> None:
    op.create_index(
        "ix_verdicts_probe_started", "verdicts", ["probe_id", "started_at"], unique=False
    )
    op.create_index(
        "ix_verdicts_domain_cc_started", "verdicts", ["domain", "cc", "started_at"], unique=False
    )
    op.drop_index("ix_verdicts_probe_triggers", table_name="verdicts")
    op.drop_index("ix_verdicts_started", table_name="verdicts")
    op.drop_index("ix_verdicts_domain_started", table_name="verdicts")
    op.drop_index("ix_measurements_controls", table_name="measurements")
