"""How long a backup and a restore take: a database of 10,000 jobs (with a worker and
five metrics each) and N bytes of artifacts in the local blob store.

The rows are inserted directly (a few seconds), the artifacts are random bytes in
64 MiB values (nothing compresses, and a backup does not try). Then, timed, in one
process, as ``kaon backup`` runs them:

- create: a consistent copy of the database (SQLite's online backup API, or one
  REPEATABLE READ transaction on PostgreSQL), every row, the home's files and every
  artifact value, sealed in 4 MiB AES-256-GCM chunks and written, fsync'ed;
- verify: the sha256 of the whole file, then every chunk decrypted and every record read;
- restore: the same checks, then the rows inserted into a new, empty database and the
  values put into a new home's blob store.

    .venv/bin/python benchmarks/backup.py [--jobs 10000] [--artifacts 1Gi]
        [--db postgresql://root@127.0.0.1:5432/postgres] [--json]

With ``--db`` the source and target are new databases on that PostgreSQL server
(created here and dropped after); without it, SQLite files in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kaon.core.resources import parse_memory
from kaon.server.backup.archive import no_progress
from kaon.server.backup.run import create, restore, verify
from kaon.server.config import Settings, normalize_database_url
from kaon.server.db.models import Job, Metric, Node, Worker, Workspace
from kaon.server.db.session import Database
from kaon.server.security.keys import MASTER_KEY_FILE, FileMasterKeys
from kaon.server.storage.blobstore import LocalBlobStore

MiB = 2**20
VALUE = 64 * MiB
SPEC: dict[str, Any] = {
    "command": ["python", "train.py", "--epochs", "10"],
    "env": {"LR": "0.001", "BATCH": "64"},
    "resources": {"cpu": 2.0, "memory": 8 * 2**30, "gpus": 1},
    "workers": 1,
    "max_retries": 2,
}


async def _pg(admin: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def databases(admin: str | None, folder: Path) -> Iterator[tuple[str, str]]:
    """A source and a target database, both new and empty."""
    if admin is None:
        yield (
            normalize_database_url(str(folder / "source.db")),
            normalize_database_url(str(folder / "target.db")),
        )
        return
    names = [f"kaon_bench_{secrets.token_hex(4)}" for _ in range(2)]
    for name in names:
        asyncio.run(_pg(admin, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(admin)
    try:
        yield tuple(  # type: ignore[misc]
            normalize_database_url(urlunsplit(parts._replace(path=f"/{name}"))) for name in names
        )
    finally:
        for name in names:
            asyncio.run(_pg(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def fill_database(url: str, jobs: int) -> None:
    db = Database(url)
    await db.migrate()
    now = datetime.now(UTC)
    async with db.session() as s:
        s.add(Workspace(id="wsbench", name="bench"))
        s.add(
            Node(
                id="n-bench", name="bench", executor="local", address="local",
                labels={}, cpu=64.0, memory=256 * 2**30, gpus=[],
            )
        )  # fmt: skip
    batch = 1000
    for start in range(0, jobs, batch):
        async with db.session() as s:
            for i in range(start, min(start + batch, jobs)):
                job_id = f"j-{i:012d}"
                s.add(
                    Job(
                        id=job_id, workspace_id="wsbench", name=f"job-{i}", spec=SPEC,
                        status="succeeded", message="", submitted_at=now, started_at=now,
                        finished_at=now, system_env={"KAON_JOB_ID": job_id},
                    )
                )  # fmt: skip
            await s.flush()
            for i in range(start, min(start + batch, jobs)):
                job_id = f"j-{i:012d}"
                s.add(
                    Worker(
                        job_id=job_id, attempt=0, index=0, node_id="n-bench", cpu=2.0,
                        memory=8 * 2**30, gpus=[0], active=False, exit_code=0,
                        started_at=now, ended_at=now,
                    )
                )  # fmt: skip
                for step in range(5):
                    s.add(
                        Metric(
                            job_id=job_id, worker=0, step=step, time=now.timestamp(),
                            name="loss", value=1.0 / (step + 1),
                        )
                    )  # fmt: skip
    await db.dispose()


def fill_artifacts(home: Path, size: int) -> int:
    store = LocalBlobStore(home / "artifacts")
    values = 0
    left = size
    while left > 0:
        n = min(VALUE, left)
        key = f"wsbench/{secrets.token_hex(32)}"
        store.put(key, (os.urandom(min(MiB, n - o)) for o in range(0, n, MiB)))
        left -= n
        values += 1
    return values


def timed(step: Any, *args: Any) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result = step(*args, no_progress)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--artifacts", default="1Gi", help="bytes of artifacts (1Gi, 200Mi)")
    parser.add_argument("--db", default=None, help="a PostgreSQL server's URL (default: SQLite)")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: /tmp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_memory(args.artifacts)
    folder = Path(tempfile.mkdtemp(prefix="kaon-bench-backup-", dir=args.dir))
    try:
        with databases(args.db, folder) as (source_url, target_url):
            home, target = folder / "home", folder / "restored"
            FileMasterKeys(home / MASTER_KEY_FILE)
            start = time.perf_counter()
            asyncio.run(fill_database(source_url, args.jobs))
            values = fill_artifacts(home, size)
            fill_s = time.perf_counter() - start
            file = folder / "kaon.backup"
            create_s, made = timed(create, Settings(home=home, database_url=source_url), file)
            verify_s, _ = timed(verify, Settings(home=home, database_url=source_url), file)
            target.mkdir()
            shutil.copy2(home / MASTER_KEY_FILE, target / MASTER_KEY_FILE)
            restore_s, _ = timed(restore, Settings(home=target, database_url=target_url), file)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = sum(made["contents"]["tables"].values())
    report = {
        "database": "postgresql" if args.db else "sqlite",
        "jobs": args.jobs,
        "rows": rows,
        "artifact_bytes": size,
        "artifact_values": values,
        "backup_bytes": made["bytes"],
        "fill_s": round(fill_s, 2),
        "create_s": round(create_s, 2),
        "verify_s": round(verify_s, 2),
        "restore_s": round(restore_s, 2),
        "create_mib_s": round(made["bytes"] / MiB / create_s, 1),
        "restore_mib_s": round(made["bytes"] / MiB / restore_s, 1),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['database']}: {args.jobs} jobs ({rows} rows), {size / MiB:.0f} MiB of "
        f"artifacts in {values} values; backup file {made['bytes'] / MiB:.0f} MiB"
    )
    for step in ("create", "verify", "restore"):
        line = f"  {step:8s} {report[f'{step}_s']:7.2f} s"
        if f"{step}_mib_s" in report:
            line += f"  ({report[f'{step}_mib_s']} MiB/s)"
        print(line)


if __name__ == "__main__":
    main()
