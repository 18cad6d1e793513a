"""users and roles: users, their role in each workspace, the user a token acts for

Existing tokens keep working: one instance-admin user named "admin" owns every live admin
token; every live member token minted by an admin token (or by none) gets a user of its
own, named after it, a member of the token's workspaces; a member token minted by another
member token belongs to its parent's user. Gateway tokens stay without a user (system
tokens). Revoked tokens get no user: they are dead already.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 07:10:00.000000
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import kaon.server.db.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_RANK = {"viewer": 0, "member": 1, "admin": 2}


def upgrade() -> None:
    utc = kaon.server.db.models.UTCDateTime(timezone=True)
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=63), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("created_by", sa.String(length=63), nullable=True),
    )
    op.create_table(
        "memberships",
        sa.Column(
            "user_id",
            sa.String(length=32),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "workspace_id",
            sa.String(length=32),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("role", sa.String(length=16), nullable=False),
    )
    op.create_index("ix_memberships_workspace_id", "memberships", ["workspace_id"])
    # a plain ADD COLUMN with the reference inline, as in 0008: rebuilding the table
    # would cascade-delete its token_workspaces rows on SQLite
    user = sa.Column(
        "user_id",
        sa.String(length=32),
        sa.ForeignKey("users.id", ondelete="SET NULL"),
        nullable=True,
    )
    op.add_column("tokens", user, inline_references=True)
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    _give_tokens_users(utc)


def _give_tokens_users(utc: sa.types.TypeEngine[datetime]) -> None:
    bind = op.get_bind()
    tokens = sa.table(
        "tokens",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("role", sa.String),
        sa.column("parent_id", sa.String),
        sa.column("created_at", utc),
        sa.column("revoked_at", utc),
        sa.column("user_id", sa.String),
    )
    links = sa.table(
        "token_workspaces", sa.column("token_id", sa.String), sa.column("workspace_id", sa.String)
    )
    users = sa.table(
        "users",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("is_admin", sa.Boolean),
        sa.column("created_at", utc),
        sa.column("created_by", sa.String),
    )
    memberships = sa.table(
        "memberships",
        sa.column("user_id", sa.String),
        sa.column("workspace_id", sa.String),
        sa.column("role", sa.String),
    )
    rows = bind.execute(
        sa.select(tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.parent_id)
        .where(tokens.c.revoked_at.is_(None))
        .order_by(tokens.c.created_at, tokens.c.id)
    ).all()
    spaces: dict[str, list[str]] = {}
    for token_id, workspace_id in bind.execute(sa.select(links.c.token_id, links.c.workspace_id)):
        spaces.setdefault(token_id, []).append(workspace_id)
    now = datetime.now(UTC)
    owner: dict[str, str] = {}  # token id -> user id
    role_of: dict[tuple[str, str], str] = {}  # (user id, workspace id) -> role
    taken: set[str] = set()
    admin_id: str | None = None
    for token_id, name, role, parent_id in rows:
        if role == "gateway":
            continue
        if role == "admin":
            if admin_id is None:
                admin_id = _new_user(bind, users, "admin", True, now, taken)
            owner[token_id] = admin_id
            continue
        inherited = owner.get(parent_id) if parent_id else None
        if inherited is not None and inherited != admin_id:
            owner[token_id] = inherited
        else:
            owner[token_id] = _new_user(bind, users, name, False, now, taken)
        for workspace_id in spaces.get(token_id, []):
            key = (owner[token_id], workspace_id)
            if _RANK[role_of.get(key, "viewer")] <= _RANK.get(role, 0):
                role_of[key] = role if role in _RANK else "viewer"
    for token_id, user_id in owner.items():
        bind.execute(tokens.update().where(tokens.c.id == token_id).values(user_id=user_id))
    for (user_id, workspace_id), role in role_of.items():
        bind.execute(
            memberships.insert().values(user_id=user_id, workspace_id=workspace_id, role=role)
        )


def _new_user(
    bind: sa.Connection,
    users: sa.TableClause,
    name: str,
    is_admin: bool,
    now: datetime,
    taken: set[str],
) -> str:
    """A user named `name`, or `name-<random>` where two tokens had one name."""
    unique = name
    while unique in taken:
        unique = f"{name[:54]}-{secrets.token_hex(4)}"
    taken.add(unique)
    user_id = f"usr-{secrets.token_hex(6)}"
    bind.execute(
        users.insert().values(
            id=user_id, name=unique, is_admin=is_admin, created_at=now, created_by="migration"
        )
    )
    return user_id


def downgrade() -> None:
    op.drop_index("ix_tokens_user_id", table_name="tokens")
    op.drop_column("tokens", "user_id")
    op.drop_index("ix_memberships_workspace_id", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("users")
