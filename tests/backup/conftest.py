"""Fixtures of the backup tests: a second empty database to restore into, and the
`kaon backup` command run as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kaon.cli.main import app
from kaon.server.config import normalize_database_url
from tests.conftest import PG_ENV, _pg_admin_url, _pg_database, _pg_exec


@contextmanager
def new_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped on the way out); skips without one."""
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(f"set {PG_ENV} to restore into PostgreSQL")
    name = f"kaon_restore_{secrets.token_hex(6)}"
    asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_database_url(_pg_database(admin, name))
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def target_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second fresh, empty database of the same kind as `db_url`: where a backup is
    restored."""
    if db_url.startswith("sqlite"):
        yield normalize_database_url(str(tmp_path / "restored.db"))
        return
    with new_pg_database() as url:
        yield url


@pytest.fixture
def other_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the other kind: a backup of SQLite restored into
    PostgreSQL, and the other way round."""
    if not db_url.startswith("sqlite"):
        yield normalize_database_url(str(tmp_path / "restored.db"))
        return
    with new_pg_database() as url:
        yield url


def drop_database(url: str) -> None:
    """Destroy a test database: the SQLite file, or the PostgreSQL database."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    admin = _pg_admin_url()
    assert admin is not None
    name = url.rsplit("/", 1)[1]
    asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Outcome:
    exit_code: int
    result: dict[str, Any]
    output: str


def backup_cli(command: str, file: Path, home: Path, db: str, *extra: str) -> Outcome:
    """`kaon backup COMMAND FILE --json` against `home` and `db`."""
    args = ["backup", command, str(file), "--home", str(home), "--db", db, "--json", *extra]
    ran = CliRunner().invoke(app, args)
    try:
        result = json.loads(ran.stdout)
    except ValueError:
        result = {}
    return Outcome(ran.exit_code, result, ran.output)
