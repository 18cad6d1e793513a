"""token lifetimes: expiry, the token that minted a token (revocation cascades)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 06:30:00.000000
"""

from __future__ import annotations

from alembic import op  # noqa: F401

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
