"""workspace storage quota: the bytes one workspace may store, set per workspace

NULL (and no quota row) means the instance's default, ``KAON_WORKSPACE_STORAGE_LIMIT``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 09:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quotas", sa.Column("storage", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite 3.35+): a batch rebuild of the table would cascade-delete
    # the rows that reference it
    op.drop_column("quotas", "storage")
