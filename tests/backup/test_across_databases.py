"""One logical format: a backup of SQLite restores into PostgreSQL and the other way
round, and every row comes back exactly (bytes, JSON, UTC datetimes, floats)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.server.db.models import Base
from kaon.server.security.keys import MASTER_KEY_FILE
from tests.backup.conftest import backup_cli
from tests.conftest import ThreadServer, test_settings

PY = sys.executable
REPORT = (
    "from kaon.report import flush, report\n"
    "report(step=1, loss=0.1, tiny=1e-300, third=1 / 3); flush(); print('reported')\n"
)


def every_row(url: str) -> dict[str, list[tuple[Any, ...]]]:
    async def read() -> dict[str, list[tuple[Any, ...]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                found = {}
                for table in Base.metadata.sorted_tables:
                    query = select(table).order_by(*table.primary_key.columns)
                    found[table.name] = [tuple(r) for r in (await conn.execute(query)).all()]
                return found
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_rows_restore_exactly_into_the_other_database(
    tmp_path: Path, db_url: str, other_db_url: str
) -> None:
    source_home = tmp_path / "home"
    with ThreadServer(test_settings(source_home, db_url)) as server:
        client = server.client()
        client.secrets.set("api-key", "value \u00e9\u4e2d with bytes")
        member = client.tokens.create("bob", ["default"], "member").token
        job = client.jobs.submit([PY, "-c", REPORT], name="reporter", cpu=0.5)
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
        logs = client.jobs.logs(job.id)
    file = tmp_path / "kaon.backup"
    assert backup_cli("create", file, source_home, db_url).exit_code == 0
    home = tmp_path / "other-home"
    home.mkdir()
    shutil.copy2(source_home / MASTER_KEY_FILE, home / MASTER_KEY_FILE)
    restored = backup_cli("restore", file, home, other_db_url)
    assert restored.exit_code == 0, restored.output

    before, after = every_row(db_url), every_row(other_db_url)
    assert before["metrics"] and before["secrets"] and before["workspace_keys"]
    for table, rows in before.items():
        assert after[table] == rows, table
    with ThreadServer(test_settings(home, other_db_url)) as again:
        client = again.client()
        assert client.jobs.logs(job.id) == logs and "reported" in logs
        assert Client(again.url, token=member).whoami().token == "bob"
        assert [s.name for s in client.secrets.list()] == ["api-key"]
