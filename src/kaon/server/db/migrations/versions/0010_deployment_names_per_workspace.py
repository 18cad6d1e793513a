"""deployment names per workspace: unique (workspace_id, name) instead of unique name

A name taken in one workspace is free in every other: creating a deployment must not tell
a caller that another workspace uses a name. The gateway's canonical path names both,
``/{workspace}/{name}/...``.

SQLite cannot drop a constraint, so batch mode rebuilds the table: a copy, then a DROP of
the old one. With foreign keys enforced, that DROP deletes every row first, and the
deletion cascades to the deployments' tokens, replicas and replica jobs. So their ids are
moved aside for the rebuild (children dangle meanwhile, which deferred foreign keys allow
within the transaction) and put back on the new table, where the children find them again
before the commit checks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 09:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_NEW = "uq_deployments_workspace_name"
_ASIDE = "~"  # no deployment id starts with it (they are `new_id("d")`: "d-...")
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}  # SQLite's unnamed one, reflected


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    old = "uq_deployments_name" if sqlite else "deployments_name_key"
    _rebuild(sqlite, drop=old, create=(_NEW, ["workspace_id", "name"]))


def downgrade() -> None:
    """Fails while two workspaces have deployments of the same name (rename one first)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    old = "uq_deployments_name" if sqlite else "deployments_name_key"
    _rebuild(sqlite, drop=_NEW, create=(old, ["name"]))


def _rebuild(sqlite: bool, drop: str, create: tuple[str, list[str]]) -> None:
    if sqlite:
        _ids_aside()
    with op.batch_alter_table("deployments", naming_convention=_NAMING) as batch:
        batch.drop_constraint(drop, type_="unique")
        batch.create_unique_constraint(*create)
    if sqlite:
        op.execute(f"UPDATE deployments SET id = substr(id, {len(_ASIDE) + 1})")


def _ids_aside() -> None:
    """Rename every deployment's id so that the rebuild's DROP cascades to nothing. The
    first UPDATE opens the transaction (the driver begins one at the first write), in which
    `defer_foreign_keys` holds until the commit."""
    op.execute("UPDATE deployments SET id = id WHERE 0")
    op.execute("PRAGMA defer_foreign_keys = ON")
    op.execute(f"UPDATE deployments SET id = '{_ASIDE}' || id")
