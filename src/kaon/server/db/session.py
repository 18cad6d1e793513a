"""The engine and the session factory, and the one place that knows SQLite from PostgreSQL.

SQLite runs in WAL mode with a busy timeout, so the API and the reconcilers (one process,
many short transactions) do not trip over each other's locks.

A database that stays locked, or cannot be reached, is not waited on for long: after
`busy_timeout_s` the call fails, `db_unavailable` recognises the failure, and the API
answers 503 with ``Retry-After`` (`kaon.server.errors`); `Database.ready` is the same
question asked on purpose, for ``/readyz``.

The SQLite file, its WAL and its shared-memory index hold every workspace's jobs and
token hashes: they are made readable by the server's user only (SQLite gives the WAL and
SHM files the mode of the database file).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from kaon.core.errors import UnavailableError

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_S = 5.0
RETRY_AFTER_S = 5
PRIVATE_FILE = 0o600
_SQLITE_FILES = ("", "-wal", "-shm", "-journal")
_UNAVAILABLE_SQLITE = (
    "database is locked",
    "database table is locked",
    "unable to open database",
    "disk i/o error",
    "readonly database",
    "database or disk is full",
)
_UNAVAILABLE_SQLSTATE = ("08", "53", "57P", "55P03", "40001", "40P01")
"""PostgreSQL error classes that say "not now": connection exceptions, insufficient
resources, operator intervention (shutdown, starting up), a lock not granted in time,
and serialization failures and deadlocks (retrying succeeds)."""


class Database:
    """Owns the engine. `session()` yields a session inside a transaction."""

    def __init__(self, url: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.busy_timeout_s = busy_timeout_s
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout_s}
            _private_sqlite_files(url)
        else:
            ms = str(int(busy_timeout_s * 1000))
            kwargs.update(
                pool_size=10,
                max_overflow=10,
                pool_pre_ping=True,
                pool_timeout=busy_timeout_s,
                connect_args={"timeout": busy_timeout_s, "server_settings": {"lock_timeout": ms}},
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            busy_ms = int(busy_timeout_s * 1000)
            event.listen(
                self.engine.sync_engine,
                "connect",
                lambda conn, record: _sqlite_pragmas(conn, record, busy_ms),
            )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on error: one
        short unit of work of a reconciler or of start-up."""
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """A session for one request. Nothing commits by itself: the service that writes
        calls ``session.commit()`` when its change is whole (and only then wakes a
        reconciler); whatever is left uncommitted is rolled back on the way out."""
        async with self._sessions() as session:
            yield session

    async def ready(self) -> None:
        """Raise `UnavailableError` unless the database answers now and could take a
        write: on SQLite the write lock is taken and given back at once (reads go on
        while another connection holds it, so a read alone would say ready)."""
        try:
            async with asyncio.timeout(self.busy_timeout_s + 1):
                async with self.engine.connect() as conn:
                    if self.is_sqlite:
                        raw = await conn.execution_options(isolation_level="AUTOCOMMIT")
                        await raw.exec_driver_sql("BEGIN IMMEDIATE")
                        await raw.exec_driver_sql("ROLLBACK")
                    else:
                        await conn.execute(text("SELECT 1"))
        except DBAPIError as e:
            raise db_unavailable(e) or UnavailableError(f"the database failed: {e.orig}") from e
        except (OSError, TimeoutError) as e:
            raise UnavailableError(f"the database cannot be reached: {e!r}") from e

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (runs on every start)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(migrate_to)

    async def dispose(self) -> None:
        await self.engine.dispose()


def db_unavailable(exc: DBAPIError) -> UnavailableError | None:
    """The 503 for a database error that says "not now" (locked, unreachable, shutting
    down, out of connections), or None for any other error."""
    if exc.connection_invalidated:
        return UnavailableError("the database connection was lost; try again")
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and code.startswith(_UNAVAILABLE_SQLSTATE):
        return UnavailableError(f"the database cannot serve this now: {orig}", RETRY_AFTER_S)
    message = str(orig).lower()
    if any(what in message for what in _UNAVAILABLE_SQLITE) or isinstance(orig, OSError):
        return UnavailableError(f"the database cannot serve this now: {orig}", RETRY_AFTER_S)
    return None


def _private_sqlite_files(url: str) -> None:
    """Make the database file (empty, if new) with mode 0600 before SQLite opens it, and
    take read access from others on any that exist: SQLite makes its WAL and SHM files
    with the database file's mode."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    for suffix in _SQLITE_FILES:
        try:
            os.chmod(f"{path}{suffix}", PRIVATE_FILE)
        except FileNotFoundError:
            pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, busy_ms: int) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")  # first: WAL mode may wait for a lock
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate_to(connection: Connection, revision: str = "head", down: bool = False) -> None:
    """Run the migrations on `connection` up (or `down`) to `revision`: what every start
    does to ``head``, and what the tests of a migration do to an older revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


def run_migrations_sync(url: str) -> None:  # pragma: no cover - used by tooling
    db = Database(url)
    asyncio.run(db.migrate())
