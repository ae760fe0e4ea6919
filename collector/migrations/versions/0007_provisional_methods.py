"""events: whether an event's methods are agreed or provisional stand-ins

``events.methods_agreed``: false while no method has been reported by as many
probes as it takes to open an event, and the methods shown are the most
reported ones, replaced (not accumulated) at each pass until one is agreed. A
probe whose measurement straddled the censor's reconfiguration (TCP connected
before an IP block, the handshake cut after) no longer leaves its method on
the event for good. Existing events count as agreed, as they were treated.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("methods_agreed", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("methods_agreed")
