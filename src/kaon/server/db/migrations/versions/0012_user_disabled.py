"""users can be disabled: their tokens stop working until they are enabled again

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kaon.server.db.models

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = kaon.server.db.models.UTCDateTime(timezone=True)
    op.add_column("users", sa.Column("disabled_at", utc, nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite 3.35+): a batch rebuild of the table would cascade-delete
    # the rows that reference it
    op.drop_column("users", "disabled_at")
