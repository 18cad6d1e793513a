"""No secret value in plain text anywhere on disk: the database (SQLite's file and its
WAL, or PostgreSQL's tables), the launch files, run folders and logs under KAON_HOME,
after a job that uses the secret ran. And rotating the master key while Kaon serves."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
from pathlib import Path

import pytest

from kaon.core.errors import PermissionDeniedError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.sdk.secrets import secret
from kaon.server.security.keys import MASTER_KEY_FILE, decode_key
from tests.backup.conftest import backup_cli
from tests.conftest import RunningServer

PY = sys.executable
VALUE = "kaon-plaintext-canary-5d1c9e77a0b3"
MARKER = b"KAON-ARTIFACT-MARKER-8e2f41c7"
USES_IT = "import hashlib, os; print(hashlib.sha256(os.environ['API_KEY'].encode()).hexdigest())"


def files_holding(home: Path, needle: bytes) -> list[str]:
    """Every file under `home` whose bytes contain `needle` (the database, its WAL,
    launch files, logs: everything)."""
    found = []
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(home)))
            except OSError:
                pass  # a file that vanished meanwhile (a .tmp renamed)
    return found


async def pg_rows_holding(url: str, needle: str) -> list[str]:
    """Every table of the PostgreSQL database whose rows, as text, contain `needle`."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        hits = []
        for t in tables:
            name = t["tablename"]
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{name}" t')
            hex_needle = needle.encode().hex()
            if any(needle in r["row"] or hex_needle in r["row"] for r in rows):
                hits.append(name)
        return hits
    finally:
        await conn.close()


def run_with_secret(client: Client) -> None:
    job = client.jobs.submit([PY, "-c", USES_IT], env={"API_KEY": secret("api-key")}, cpu=0.5)
    done = client.jobs.wait(job.id, timeout=60)
    logs = client.jobs.logs(job.id)
    assert done.status is JobStatus.SUCCEEDED, logs
    assert hashlib.sha256(VALUE.encode()).hexdigest() in logs  # the worker had the value


class TestAtRest:
    def test_no_plaintext_on_disk(self, server: RunningServer, client: Client) -> None:
        client.secrets.set("api-key", VALUE)
        run_with_secret(client)
        home = server.settings.home
        assert list(home.glob("runs/*/*/*/launch.json")), "the job left no launch file"
        if server.settings.database_url.startswith("sqlite"):
            db_files = list(home.parent.glob("kaon.db*")) + list(home.glob("kaon.db*"))
            assert any(p.name.endswith("-wal") for p in db_files), db_files
            for path in db_files:
                assert VALUE.encode() not in path.read_bytes(), path
        else:
            hits = asyncio.run(pg_rows_holding(server.settings.database_url, VALUE))
            assert hits == []
        assert files_holding(home, VALUE.encode()) == []
        assert files_holding(home.parent, VALUE.encode()) == []  # the SQLite file's folder

    def test_no_plaintext_in_a_backup_or_the_artifact_store(
        self, server: RunningServer, client: Client, tmp_path: Path
    ) -> None:
        """A backup made with `kaon backup create` while Kaon runs, and every stored
        value of the artifact store, hold neither a secret's value nor an artifact's
        bytes in plain text."""
        client.secrets.set("api-key", VALUE)
        data = tmp_path / "data"
        data.mkdir()
        (data / "small.txt").write_bytes(MARKER + b" a line\n")
        (data / "big.bin").write_bytes(MARKER + os.urandom(2**20) + MARKER)  # two records
        client.artifacts.push("dataset", data, kind="dataset")
        home = server.settings.home
        store = [p for p in (home / "artifacts").rglob("*") if p.is_file()]
        assert len(store) == 2
        assert files_holding(home / "artifacts", MARKER) == []
        assert files_holding(home, MARKER) == []  # nothing materialised it, nothing leaked
        file = tmp_path / "kaon.backup"
        made = backup_cli("create", file, home, server.settings.database_url)
        assert made.exit_code == 0, made.output
        assert made.result["contents"]["artifacts"] == 2, made.result  # the values are in it
        body = file.read_bytes()
        assert len(body) > 2**20
        assert VALUE.encode() not in body and VALUE.encode().hex().encode() not in body
        assert MARKER not in body and MARKER.hex().encode() not in body

    def test_the_grep_would_find_a_plaintext_value(self, server: RunningServer) -> None:
        """The search itself works: a value written in plain text is found."""
        (server.settings.home / "runs" / "planted.txt").write_text(f"x={VALUE}\n")
        assert files_holding(server.settings.home, VALUE.encode()) == ["runs/planted.txt"]


class TestRotation:
    def test_rotating_the_master_key_while_serving(
        self, server: RunningServer, client: Client
    ) -> None:
        client.workspaces.create("team-b")
        client.secrets.set("api-key", VALUE)
        client.secrets.set("other", "v2", workspace="team-b")
        key_file = server.settings.home / MASTER_KEY_FILE
        before = key_file.read_text().split()
        result = client.admin.rotate_master_key()
        after = key_file.read_text().split()
        assert result.rewrapped == 2
        assert len(result.retired) == 1 and len(after) == 1
        assert decode_key(after[0]) != decode_key(before[0])
        assert result.master_key_id not in result.retired
        run_with_secret(client)  # the re-wrapped data key still opens the secret
        again = client.admin.rotate_master_key()
        assert again.rewrapped == 2 and again.master_key_id != result.master_key_id

    def test_only_admins_rotate(self, server: RunningServer, client: Client) -> None:
        member = client.tokens.create("m").token
        with server.client(member) as m, pytest.raises(PermissionDeniedError):
            m.admin.rotate_master_key()


class TestRotationUnderLoad:
    def test_writes_go_on_while_many_data_keys_are_rewrapped(
        self, server: RunningServer, client: Client
    ) -> None:
        """More workspaces than one re-wrap batch, and secrets set meanwhile: every call
        succeeds and every value still opens under the new key."""
        names = [f"ws-{i}" for i in range(105)]
        for name in names:
            client.workspaces.create(name)
            client.secrets.set("k", f"value-{name}", workspace=name)
        errors: list[BaseException] = []

        def keep_writing() -> None:
            with server.client() as c:
                for i in range(20):
                    try:
                        c.secrets.set("during", f"v{i}", workspace=names[i])
                    except BaseException as e:
                        errors.append(e)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        result = client.admin.rotate_master_key()
        writer.join()
        assert errors == []
        assert result.rewrapped >= 105
        assert client.admin.rotate_master_key().rewrapped == 105
        client.secrets.set("api-key", VALUE)
        run_with_secret(client)
