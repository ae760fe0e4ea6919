"""subscriptions: the language of their messages

``subscriptions.language``: the language a subscriber asked for (``en``,
``zh-Hans``), NULL for "the instance's own"; ``subscriptions.instance_language``:
what the instance's description (``languages`` of /api/v2/instance) named,
learned when the ownership check passed. Existing subscriptions get neither:
their next message asks the instance, else falls back to ``--alert-language``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("language", sa.String(16), nullable=True))
        batch.add_column(sa.Column("instance_language", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("instance_language")
        batch.drop_column("language")
