"""measurements: where each comes from (a Blockwatch probe, or OONI's archive)

``network_states.ooni``: OONI's measurements vote in this network too ("OONI
saw"); ``network_states.probes`` no longer counts them (OONI hides nobody, so
it never helps a network reach the volunteers it needs to be named).

``events.history``: the event was opened by replaying history (an import of
measurements older than the detector's window), not by a live pass.

``measurements.source``: ``blockwatch`` (a probe's signed envelope: the
signature column holds it) or ``ooni`` (an OONI measurement imported by
``blockwatch-collector ooni import``: the payload is its exact JSON, whose
``report_id`` and ``measurement_uid`` find it in OONI's public archive, and the
signature column is empty). Existing rows are Blockwatch's.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="blockwatch")
        )
    with op.batch_alter_table("network_states") as batch:
        batch.add_column(sa.Column("ooni", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("history", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("history")
    with op.batch_alter_table("network_states") as batch:
        batch.drop_column("ooni")
    with op.batch_alter_table("measurements") as batch:
        batch.drop_column("source")
