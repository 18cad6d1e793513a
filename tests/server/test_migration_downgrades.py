"""The newest migrations step back without losing rows of other tables: on SQLite a
column dropped by rebuilding its table would cascade-delete the rows that reference it
(memberships reference users), so 0011 and 0012 drop their columns in place. On SQLite
and PostgreSQL: down to 0010 and up again, every row still there."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kaon.server.db.session import Database, migrate_to

NOW = datetime(2026, 11, 30, 10, tzinfo=UTC)
ROWS = {
    "workspaces": "SELECT count(*) FROM workspaces WHERE name = 'team-m'",
    "users": "SELECT count(*) FROM users WHERE name = 'mia'",
    "memberships": "SELECT count(*) FROM memberships WHERE role = 'member'",
    "quotas": "SELECT count(*) FROM quotas WHERE gpus = 2",
}


async def _counts(conn: AsyncConnection) -> dict[str, int]:
    return {
        name: int((await conn.execute(sa.text(sql))).scalar_one()) for name, sql in ROWS.items()
    }


async def _round_trip(url: str) -> list[dict[str, int]]:
    db = Database(url)
    try:
        await db.migrate()
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO workspaces (id, name, created_at) VALUES ('w-m', 'team-m', :t)"
                ),
                {"t": NOW},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO users (id, name, is_admin, created_at, disabled_at) "
                    "VALUES ('u-m', 'mia', false, :t, :t)"
                ),
                {"t": NOW},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO memberships (user_id, workspace_id, role) "
                    "VALUES ('u-m', 'w-m', 'member')"
                )
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO quotas (workspace_id, gpus, storage, updated_at) "
                    "VALUES ('w-m', 2, 1024, :t)"
                ),
                {"t": NOW},
            )
        seen = []
        async with db.engine.begin() as conn:
            seen.append(await _counts(conn))
            await conn.run_sync(functools.partial(migrate_to, revision="0010", down=True))
            seen.append(await _counts(conn))
            await conn.run_sync(migrate_to)
            seen.append(await _counts(conn))
        return seen
    finally:
        await db.dispose()


def test_down_to_0010_and_up_again_keeps_every_row(db_url: str) -> None:
    one = dict.fromkeys(ROWS, 1)
    assert asyncio.run(_round_trip(db_url)) == [one, one, one]
