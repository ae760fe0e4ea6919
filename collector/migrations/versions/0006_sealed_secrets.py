"""secrets at rest: room for sealed values, and the old secret's overlap after rotation

- ``subscriptions.secret`` becomes ``Text``: a sealed ``whsec_...`` secret
  (``bws1:<key id>:<Fernet token>``, collector/core/secrets.py) is about 155
  characters, more than the former ``String(64)``.
- ``subscriptions.previous_secret`` (sealed) and ``previous_secret_until``:
  after ``rotate-secret`` the old secret still signs deliveries, beside the new
  one, for 24 hours.

No data moves here: a migration has no key. The collector seals the values
still clear when it starts (``collector.services.subscriptions.seal_stored``).
Going down: versions before 0006 cannot read sealed values, and PostgreSQL
refuses to put one back into ``String(64)``; that refusal is wanted (nothing is
truncated).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.alter_column(
            "secret", existing_type=sa.String(length=64), type_=sa.Text(), existing_nullable=True
        )
        batch.add_column(sa.Column("previous_secret", sa.Text(), nullable=True))
        batch.add_column(sa.Column("previous_secret_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("previous_secret_until")
        batch.drop_column("previous_secret")
        batch.alter_column(
            "secret", existing_type=sa.Text(), type_=sa.String(length=64), existing_nullable=True
        )
