"""token lifetimes: expiry, the token that minted a token (revocation cascades)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 06:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kaon.server.db.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs, with the reference inline: SQLite cannot add a constraint later,
    # and rebuilding the table (batch mode) would cascade-delete its token_workspaces rows
    utc = kaon.server.db.models.UTCDateTime(timezone=True)
    op.add_column("tokens", sa.Column("expires_at", utc, nullable=True))
    parent = sa.Column(
        "parent_id", sa.String(length=32), sa.ForeignKey("tokens.id"), nullable=True
    )
    op.add_column("tokens", parent, inline_references=True)
    op.create_index("ix_tokens_parent_id", "tokens", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_tokens_parent_id", table_name="tokens")
    op.drop_column("tokens", "parent_id")
    op.drop_column("tokens", "expires_at")
