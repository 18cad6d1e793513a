"""A backup that must not be restored is refused with a clear message, and the target
(home and database) is left exactly as it was: a wrong master key, a truncated or
altered file, a newer schema or format, a target that is not empty."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from kaon.server.backup.database import existing_tables
from kaon.server.backup.format import HEADER_BYTES, decode_header, encode_header, sign
from kaon.server.backup.run import master_keys, open_key
from kaon.server.security.keys import MASTER_KEY_FILE, FileMasterKeys
from tests.backup.conftest import Outcome, backup_cli
from tests.conftest import RunningServer

PY = sys.executable


@pytest.fixture
def backup(server: RunningServer, tmp_path: Path) -> Path:
    """A backup of a control plane that ran a job and holds a secret."""
    client = server.client()
    client.secrets.set("api-key", "s3cr3t")
    job = client.jobs.submit([PY, "-c", "print('hello from the job')"], cpu=0.5)
    assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
    path = tmp_path / "kaon.backup"
    made = backup_cli("create", path, server.settings.home, server.settings.database_url)
    assert made.exit_code == 0, made.output
    assert made.result["contents"]["tables"]["jobs"] == 1
    return path


def fresh_home(tmp_path: Path, source: Path, name: str = "restored-home") -> Path:
    """An empty home that holds the source's master key, as an operator would set it up."""
    home = tmp_path / name
    home.mkdir()
    shutil.copy2(source / MASTER_KEY_FILE, home / MASTER_KEY_FILE)
    return home


def assert_untouched(home: Path, db: str) -> None:
    assert sorted(os.listdir(home)) == [MASTER_KEY_FILE]
    assert asyncio.run(existing_tables(db)) == []


def refused(outcome: Outcome, *words: str) -> None:
    assert outcome.exit_code == 2, outcome.output
    assert outcome.result["ok"] is False
    message = outcome.result["error"]
    for word in words:
        assert word in message, message


def test_verify_accepts_a_whole_backup(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    checked = backup_cli("verify", backup, server.settings.home, server.settings.database_url)
    assert checked.exit_code == 0, checked.output
    assert checked.result["contents"]["tables"]["secrets"] == 1
    assert checked.result["master_key_id"] == master_keys(server.settings.home).current_key_id()


def test_wrong_master_key_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = tmp_path / "other-home"
    home.mkdir()
    FileMasterKeys(home / MASTER_KEY_FILE)  # a master key of its own: not the backup's
    outcome = backup_cli("restore", backup, home, target_db_url)
    refused(outcome, "master key", master_keys(server.settings.home).current_key_id())
    assert_untouched(home, target_db_url)
    refused(backup_cli("verify", backup, home, target_db_url), "master key")


def test_no_master_key_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = tmp_path / "keyless-home"
    outcome = backup_cli("restore", backup, home, target_db_url)
    refused(outcome, "no master key", MASTER_KEY_FILE)
    assert not home.exists()  # not even a new key was made
    assert asyncio.run(existing_tables(target_db_url)) == []


def test_truncated_backup_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = fresh_home(tmp_path, server.settings.home)
    cut = tmp_path / "cut.backup"
    data = backup.read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    refused(backup_cli("restore", cut, home, target_db_url), "truncated")
    assert_untouched(home, target_db_url)
    cut.write_bytes(data[: HEADER_BYTES // 2])
    refused(backup_cli("verify", cut, home, target_db_url), "truncated")


def test_altered_backup_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = fresh_home(tmp_path, server.settings.home)
    data = bytearray(backup.read_bytes())
    data[HEADER_BYTES + (len(data) - HEADER_BYTES) // 2] ^= 0x01
    altered = tmp_path / "altered.backup"
    altered.write_bytes(bytes(data))
    refused(backup_cli("restore", altered, home, target_db_url), "altered")
    assert_untouched(home, target_db_url)


def _rewrite_header(backup: Path, home: Path, out: Path, **changes: object) -> None:
    """The backup with its header changed and signed again, as a newer Kaon would sign it."""
    data = backup.read_bytes()
    header = decode_header(data[:HEADER_BYTES])
    key = open_key(master_keys(home), header)
    values = {**asdict(header), **changes}
    changed = sign(replace(header, **{k: v for k, v in values.items() if k != "format"}), key)
    raw = json.loads(encode_header(changed)[12:].decode().rstrip())
    raw["format"] = values["format"]
    text = json.dumps(raw, sort_keys=True).encode()
    head = data[:8] + len(text).to_bytes(4, "big") + text
    out.write_bytes(head + b" " * (HEADER_BYTES - len(head)) + data[HEADER_BYTES:])


def test_newer_schema_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = fresh_home(tmp_path, server.settings.home)
    newer = tmp_path / "newer.backup"
    _rewrite_header(backup, server.settings.home, newer, schema_revision="9999")
    refused(backup_cli("restore", newer, home, target_db_url), "9999", "newer")
    assert_untouched(home, target_db_url)


def test_newer_format_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = fresh_home(tmp_path, server.settings.home)
    newer = tmp_path / "newer-format.backup"
    _rewrite_header(backup, server.settings.home, newer, format=2)
    refused(backup_cli("restore", newer, home, target_db_url), "format 2", "newer Kaon")
    assert_untouched(home, target_db_url)


def test_a_target_that_is_not_empty_is_refused(
    server: RunningServer, backup: Path, tmp_path: Path, target_db_url: str
) -> None:
    home = fresh_home(tmp_path, server.settings.home)
    (home / "runs").mkdir()
    refused(backup_cli("restore", backup, home, target_db_url), "empty home", "runs")
    assert sorted(os.listdir(home)) == [MASTER_KEY_FILE, "runs"]
    other = fresh_home(tmp_path, server.settings.home, "second-home")
    outcome = backup_cli("restore", backup, other, server.settings.database_url)
    refused(outcome, "empty database", "alembic_version")
    assert sorted(os.listdir(other)) == [MASTER_KEY_FILE]


def test_an_existing_file_is_not_overwritten(server: RunningServer, backup: Path) -> None:
    before = backup.read_bytes()
    again = backup_cli("create", backup, server.settings.home, server.settings.database_url)
    refused(again, "exists")
    assert backup.read_bytes() == before
