"""secrets and audit: wrapped workspace data keys, encrypted secrets, the audit chain

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 03:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import kaon.server.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

GENESIS = "0" * 64  # kaon.server.services.audit.GENESIS


def upgrade() -> None:
    utc = kaon.server.db.models.UTCDateTime(timezone=True)
    op.create_table(
        "workspace_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("rewrapped_at", utc, nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id"),
    )
    op.create_table(
        "secrets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(length=63), nullable=False),
        sa.Column("updated_by", sa.String(length=63), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["workspace_keys.id"]),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "name"),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", utc, nullable=False),
        sa.Column("principal", sa.String(length=64), nullable=True),
        sa.Column("token_name", sa.String(length=63), nullable=True),
        sa.Column("workspace", sa.String(length=63), nullable=True),
        sa.Column("action", sa.String(length=96), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_audit_time", "audit_log", ["time"])
    op.create_index("ix_audit_workspace", "audit_log", ["workspace"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    if op.get_bind().dialect.name == "sqlite":
        # The head follows every insert, so an append is one statement on SQLite (see
        # kaon.server.services.audit._one_statement; PostgreSQL does it in a CTE).
        op.execute(
            "CREATE TRIGGER audit_head_follows AFTER INSERT ON audit_log BEGIN "
            "UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_head_follows")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_workspace", table_name="audit_log")
    op.drop_index("ix_audit_time", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("secrets")
    op.drop_table("workspace_keys")
