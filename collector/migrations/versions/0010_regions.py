"""regions: a measurement's subdivision (ISO 3166-2, e.g. CN-HA)

``measurements.region`` and ``verdicts.region``: where in its country a
measurement was made, and ``region_source`` how Blockwatch knows:
``geolocated`` (the operator's city database, from the probe's address at
ingest) or ``declared`` (``run --region``; it counts once vouched). Null when
nobody knows, as for every row stored before.

``probes.declared_region`` (what the probe declares) and ``probes.last_region``
(where its last request placed it); the region an operator vouches for is
``probes.region`` and ``enrollment_tokens.region`` (migration 0005).
``events.regions``: the regions an event's blocked cells lie in
(JSON list; ``[]`` for a national event or an unknown region).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

REGION = 6  # "CN-HA"; ISO 3166-2 codes are at most 2 + 1 + 3 characters


def upgrade() -> None:
    for table in ("measurements", "verdicts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("region", sa.String(REGION), nullable=True))
            batch.add_column(sa.Column("region_source", sa.String(10), nullable=True))
    with op.batch_alter_table("probes") as batch:
        for column in ("declared_region", "last_region"):
            batch.add_column(sa.Column(column, sa.String(REGION), nullable=True))
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("regions", sa.Text(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("regions")
    with op.batch_alter_table("probes") as batch:
        for column in ("last_region", "declared_region"):
            batch.drop_column(column)
    for table in ("verdicts", "measurements"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("region_source")
            batch.drop_column("region")
