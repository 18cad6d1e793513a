"""A backup copies the artifact store it is configured with, through the store's own
interface: values of an S3 bucket (moto's S3 server on loopback) come back byte for
byte, still sealed, into another bucket prefix; a prefix that holds values is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from kaon.server.db.session import Database
from kaon.server.security.keys import MASTER_KEY_FILE, FileMasterKeys
from kaon.server.storage.s3 import S3BlobStore
from tests.artifacts.test_s3 import BUCKET, s3_endpoint  # noqa: F401  (a fixture)
from tests.backup.conftest import backup_cli

VALUES = {
    "wsone/" + "a1" * 32: os.urandom(5 * 2**20 + 3),  # more than one multipart part
    "wstwo/" + "b2" * 32: b"",
    "wstwo/" + "c3" * 32: b"sealed bytes, as stored",
}


def test_values_of_a_bucket_come_back_byte_for_byte(
    tmp_path: Path,
    s3_endpoint: str,  # noqa: F811  (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAON_S3_ENDPOINT_URL", s3_endpoint)
    source_home = tmp_path / "home"
    FileMasterKeys(source_home / MASTER_KEY_FILE)
    db = f"sqlite+aiosqlite:///{tmp_path / 'kaon.db'}"
    asyncio.run(Database(db).migrate())
    source = S3BlobStore(BUCKET, "src", endpoint_url=s3_endpoint)
    for key, value in VALUES.items():
        source.put(key, [value])

    file = tmp_path / "kaon.backup"
    monkeypatch.setenv("KAON_ARTIFACT_STORE", f"s3://{BUCKET}/src")
    made = backup_cli("create", file, source_home, db)
    assert made.exit_code == 0, made.output
    assert made.result["contents"]["artifacts"] == len(VALUES)

    home = tmp_path / "restored"
    home.mkdir()
    shutil.copy2(source_home / MASTER_KEY_FILE, home / MASTER_KEY_FILE)
    target_db = f"sqlite+aiosqlite:///{tmp_path / 'restored.db'}"
    refused = backup_cli("restore", file, home, target_db)  # into the bucket it came from
    assert refused.exit_code == 2 and "artifact store" in refused.result["error"]
    assert not (tmp_path / "restored.db").exists()

    monkeypatch.setenv("KAON_ARTIFACT_STORE", f"s3://{BUCKET}/dst")
    restored = backup_cli("restore", file, home, target_db)
    assert restored.exit_code == 0, restored.output
    target = S3BlobStore(BUCKET, "dst", endpoint_url=s3_endpoint)
    assert {key: b"".join(target.get(key)) for key in target.keys()} == VALUES
