"""Rows out of the control plane's database, and back into an empty one.

A consistent snapshot while the server writes:

- SQLite: the online backup API (`sqlite3.Connection.backup`) copies the file page by
  page into a temporary file, restarting itself if a writer changes a page it copied; the
  rows are then read from that copy, which nobody writes.
- PostgreSQL: one REPEATABLE READ, READ ONLY transaction reads every table, so all of
  them are seen at the same instant. This is what pg_dump does too; we read the rows
  ourselves rather than run pg_dump so that a backup is one logical format that restores
  into SQLite or PostgreSQL alike, needs no client binaries of the server's version, and
  streams into the same encrypted file.

A restore builds the schema with the migrations up to the backup's revision, inserts
every row in one transaction (foreign keys are not checked while it does: the rows
were consistent when read), moves PostgreSQL's sequences past the restored ids, and
then migrates to this Kaon's newest revision, as a start would.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    LargeBinary,
    MetaData,
    Table,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.types import NullType, TypeEngine

from kaon.server.backup.archive import Progress
from kaon.server.backup.format import (
    BYTES,
    DATETIME,
    END_MARK,
    JSON_KIND,
    PLAIN,
    ROWS_PER_SEGMENT,
    TABLE,
    U32,
    BackupRefusedError,
    column_kind,
    decode_rows,
    encode_rows,
    parents_first,
    record_head,
    rehome,
)
from kaon.server.db.models import Base, UTCDateTime
from kaon.server.db.session import MIGRATIONS, Database

ALEMBIC_TABLE = "alembic_version"
Emit = Callable[[bytes], None]


def _alembic(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def known_revisions() -> list[str]:
    """This Kaon's schema revisions, oldest first."""
    script = ScriptDirectory.from_config(_alembic())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupRefusedError(f"cannot back up an in-memory SQLite database ({url})")
    return Path(database)


def sqlite_snapshot(url: str, into: Path, progress: Progress) -> str:
    """Copy a live SQLite database with its online backup API; the copy's URL."""
    source_path = sqlite_path(url)
    if not source_path.exists():
        raise BackupRefusedError(f"there is no database at {source_path}")
    source = sqlite3.connect(f"file:{quote(str(source_path))}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(into)
    try:
        with target:
            source.backup(
                target,
                pages=1024,
                progress=lambda _status, left, total: progress("database", total - left, total),
            )
    finally:
        source.close()
        target.close()
    return f"sqlite+aiosqlite:///{into}"


async def dump(url: str, emit: Emit, progress: Progress) -> tuple[str, dict[str, int]]:
    """Write one record per table (schema order: a row's parents come first); the schema
    revision and the rows per table."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            if not is_sqlite(url):
                conn = await conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            async with conn.begin():
                return await _dump_tables(conn, emit, progress)
    finally:
        await engine.dispose()


async def _dump_tables(
    conn: AsyncConnection, emit: Emit, progress: Progress
) -> tuple[str, dict[str, int]]:
    present = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    if ALEMBIC_TABLE not in present:
        raise BackupRefusedError("the database has no Kaon schema (has the server ever started?)")
    revision = (await conn.execute(text(f"SELECT version_num FROM {ALEMBIC_TABLE}"))).scalar_one()
    tables = [t for t in Base.metadata.sorted_tables if t.name in present]
    counts: dict[str, int] = {}
    for done, table in enumerate(tables):
        columns = list(table.columns)
        kinds = [column_kind(c.type) for c in columns]
        emit(
            record_head(
                TABLE,
                {
                    "name": table.name,
                    "columns": [[c.name, k] for c, k in zip(columns, kinds, strict=True)],
                },
            )
        )
        rows = 0
        query = select(table).order_by(*table.primary_key.columns)
        self_refs = [fk.parent for fk in table.foreign_keys if fk.column.table is table]
        if self_refs and len(table.primary_key.columns) == 1:
            # A table that refers to itself is small (tokens): read whole, parents first.
            everything = list((await conn.execute(query)).all())
            key_at = columns.index(next(iter(table.primary_key.columns)))
            ordered = parents_first(everything, key_at, columns.index(self_refs[0]))
            for start in range(0, len(ordered), ROWS_PER_SEGMENT):
                segment = encode_rows(kinds, ordered[start : start + ROWS_PER_SEGMENT])
                emit(U32.pack(len(segment)) + segment)
            rows = len(ordered)
        else:
            result = await conn.stream(query)
            async for batch in result.partitions(ROWS_PER_SEGMENT):
                segment = encode_rows(kinds, batch)
                emit(U32.pack(len(segment)) + segment)
                rows += len(batch)
        emit(END_MARK)
        counts[table.name] = rows
        progress("tables", done + 1, len(tables))
    return str(revision), counts


async def existing_tables(url: str) -> list[str]:
    """The tables a restore target holds already (it must hold none)."""
    if is_sqlite(url):
        path = sqlite_path(url)
        if not path.exists() or path.stat().st_size == 0:
            return []
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return sorted(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def _migrate_to(revision: str) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        command.upgrade(_alembic(connection), revision)

    return run


def _column_type(table: str, column: str, kind: str) -> TypeEngine[Any]:
    if kind == BYTES:
        return LargeBinary()
    if kind == DATETIME:
        return UTCDateTime()
    if kind == JSON_KIND:
        return JSON()
    known = Base.metadata.tables.get(table)
    if known is not None and column in known.columns:
        return known.columns[column].type
    return NullType()


class Loader:
    """Inserts the table records of a backup into an empty database, in one transaction."""

    def __init__(self, url: str, revision: str, homes: tuple[str, str] | None = None) -> None:
        self.url = url
        self.revision = revision
        self.homes = homes  # (old, new): paths in rows under the old home move to the new
        self.engine = create_async_engine(url)  # no foreign-key pragma: checked at the end
        self._conn: AsyncConnection | None = None
        self._integer_columns: list[tuple[str, str]] = []

    async def begin(self) -> None:
        """Build the schema of the backup's revision, in the transaction the rows go into
        (PostgreSQL's DDL is transactional: a failed restore leaves no table behind; a
        SQLite file made here is removed instead, by `discard`)."""
        db = Database(self.url)  # makes a SQLite file private before it has anything in it
        await db.dispose()
        self._conn = await self.engine.connect()
        await self._conn.begin()
        await self._conn.run_sync(_migrate_to(self.revision))
        if not is_sqlite(self.url):
            superuser = await self._conn.execute(
                text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            )
            if superuser.scalar():
                await self._conn.execute(text("SET LOCAL session_replication_role = replica"))

    async def load_table(self, meta: dict[str, Any], segments: Iterator[bytes]) -> int:
        assert self._conn is not None
        name = str(meta["name"])
        columns = [str(c) for c, _ in meta["columns"]]
        kinds = [str(k) for _, k in meta["columns"]]
        table = Table(
            name,
            MetaData(),
            *[Column(c, _column_type(name, c, k)) for c, k in zip(columns, kinds, strict=True)],
        )
        for column, kind in zip(columns, kinds, strict=True):
            if kind == PLAIN and _is_integer(name, column):
                self._integer_columns.append((name, column))
        await self._conn.execute(table.delete())  # rows a migration seeded (the audit head)
        rows = 0
        for segment in segments:
            batch = decode_rows(columns, kinds, segment)
            if self.homes is not None:
                old, new = self.homes
                moved = [c for c, k in zip(columns, kinds, strict=True) if k in (PLAIN, JSON_KIND)]
                batch = [{**row, **{c: rehome(row[c], old, new) for c in moved}} for row in batch]
            await self._conn.execute(table.insert(), batch)
            rows += len(batch)
        return rows

    async def commit(self) -> None:
        """Move sequences past the restored ids, commit, then migrate to the newest schema."""
        assert self._conn is not None
        if not is_sqlite(self.url):
            await self._reset_sequences(self._conn)
        await self._conn.commit()
        await self._conn.close()
        self._conn = None
        async with self.engine.begin() as conn:
            await conn.run_sync(_migrate_to("head"))

    async def _reset_sequences(self, conn: AsyncConnection) -> None:
        for table, column in self._integer_columns:
            sequence = (
                await conn.execute(
                    text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column}
                )
            ).scalar()
            if sequence:
                await conn.execute(
                    text(
                        f'SELECT setval(:s, (SELECT COALESCE(MAX("{column}"), 0) FROM "{table}")'
                        " + 1, false)"
                    ),
                    {"s": sequence},
                )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.rollback()
            await self._conn.close()
            self._conn = None
        await self.engine.dispose()

    async def discard(self) -> None:
        """Undo a restore that failed part way: roll back, and remove a SQLite file that
        was made for it (the target was checked empty, so nothing else was in it)."""
        await self.close()
        if is_sqlite(self.url):
            remove_sqlite(self.url)


def remove_sqlite(url: str) -> None:
    path = sqlite_path(url)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _is_integer(table: str, column: str) -> bool:
    known = Base.metadata.tables.get(table)
    if known is None or column not in known.columns:
        return False
    try:
        return known.columns[column].type.python_type is int
    except NotImplementedError:
        return False
