"""pools: Ray clusters attached to the pool; why a node is not ready

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 01:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kaon.server.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("api_url", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("elastic", sa.Boolean(), nullable=False),
        sa.Column("created_at", kaon.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", kaon.server.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("message", sa.Text(), nullable=False, server_default=""))
        batch.alter_column("executor", type_=sa.String(length=63))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("message")
        batch.alter_column("executor", type_=sa.String(length=32))
    op.drop_table("pools")
