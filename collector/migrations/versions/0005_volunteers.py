"""volunteers, not keys: tokens vouch for networks, probes belong to a volunteer

- ``enrollment_tokens`` gets the network it vouches for (``vouched_cc``,
  ``vouched_asn``), a ``region`` (stored now, given its meaning by the regions
  work) and ``revoked_at``.
- ``probes`` gets the token it enrolled with (``token_id``: every probe of one
  token is one volunteer), the network an operator vouched for it
  (``probes vouch``), its region and whether it allows public evidence.
  Probes enrolled before this migration count as their own volunteers, vouched
  for the network they declared, so that existing deployments keep voting; the
  operator guide says how to review them.
- ``verdicts`` gets the ``network_source`` of its measurement (a declared network
  counts only when vouched), filled from ``measurements``.
- ``measurements``: a measurement id is unique per signing key, not globally, so
  that nobody can squat another probe's id (``uq_measurements_key_measurement``);
  ids are still indexed for the evidence lookups.
- ``events.probe_ids`` is renamed ``volunteers``: it holds volunteer ids.
- ``targets.removed_at``: a removed target stays, so that spooled measurements of
  it are still accepted (measurements must be of targets now).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 17:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# SQLite's constraint from 0001 has no name: batch mode names it by this convention.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    with op.batch_alter_table("enrollment_tokens") as batch:
        batch.add_column(sa.Column("vouched_cc", sa.String(length=2), nullable=True))
        batch.add_column(sa.Column("vouched_asn", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("region", sa.String(length=6), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("probes") as batch:
        batch.add_column(sa.Column("token_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("vouched_cc", sa.String(length=2), nullable=True))
        batch.add_column(sa.Column("vouched_asn", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("region", sa.String(length=6), nullable=True))
        batch.add_column(
            sa.Column("public_evidence", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.create_index("ix_probes_token_id", ["token_id"], unique=False)
        batch.create_foreign_key("fk_probes_token_id", "enrollment_tokens", ["token_id"], ["id"])
    # Existing probes: their own volunteers, vouched for what they declared.
    op.execute(
        "UPDATE probes SET vouched_cc = declared_cc, vouched_asn = declared_asn "
        "WHERE declared_cc IS NOT NULL AND declared_asn IS NOT NULL"
    )

    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(
            sa.Column(
                "network_source", sa.String(length=16), nullable=False, server_default="unknown"
            )
        )
    op.execute(
        "UPDATE verdicts SET network_source = (SELECT m.network_source FROM measurements m "
        "WHERE m.id = verdicts.measurement_pk)"
    )

    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(
            "measurements", recreate="always", naming_convention=_SQLITE_NAMES
        ) as batch:
            batch.drop_constraint("uq_measurements_measurement_id", type_="unique")
            batch.create_unique_constraint(
                "uq_measurements_key_measurement", ["key_id", "measurement_id"]
            )
    else:
        op.drop_constraint("measurements_measurement_id_key", "measurements", type_="unique")
        op.create_unique_constraint(
            "uq_measurements_key_measurement", "measurements", ["key_id", "measurement_id"]
        )
    op.create_index("ix_measurements_measurement_id", "measurements", ["measurement_id"])

    with op.batch_alter_table("events") as batch:
        batch.alter_column("probe_ids", new_column_name="volunteers")
    with op.batch_alter_table("targets") as batch:
        batch.add_column(sa.Column("removed_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM targets WHERE removed_at IS NOT NULL")
    with op.batch_alter_table("targets") as batch:
        batch.drop_column("removed_at")
    with op.batch_alter_table("events") as batch:
        batch.alter_column("volunteers", new_column_name="probe_ids")
    op.drop_index("ix_measurements_measurement_id", table_name="measurements")
    with op.batch_alter_table("measurements") as batch:
        batch.drop_constraint("uq_measurements_key_measurement", type_="unique")
        batch.create_unique_constraint("measurements_measurement_id_key", ["measurement_id"])
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("network_source")
    with op.batch_alter_table("probes") as batch:
        batch.drop_constraint("fk_probes_token_id", type_="foreignkey")
        batch.drop_index("ix_probes_token_id")
        for column in ("public_evidence", "region", "vouched_asn", "vouched_cc", "token_id"):
            batch.drop_column(column)
    with op.batch_alter_table("enrollment_tokens") as batch:
        for column in ("revoked_at", "region", "vouched_asn", "vouched_cc"):
            batch.drop_column(column)
