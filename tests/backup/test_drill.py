"""The restore drill: fill a real control plane, back it up while a job runs, destroy its
home and database, restore onto new ones, and find everything back.

On SQLite and on PostgreSQL (each a fresh database, dropped after). The trained model
and its deployment are part of the drill on both: a deployment that answers the same
predictions after a restore is what an operator checks first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kaon.cli.main import app
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.server.security.keys import MASTER_KEY_FILE
from kaon.server.storage.blobstore import LocalBlobStore
from tests.backup.conftest import backup_cli, drop_database
from tests.conftest import kill_workers
from tests.e2e.conftest import Gateway, ServerProcess

pytest.importorskip("torch")
PY = sys.executable
EXAMPLE = Path(__file__).parents[2] / "examples" / "binary_classifier"
SECRET_VALUE = "s3cr3t-value-" + "x" * 20
PRINT_SECRET = (
    "import hashlib, os; from kaon.report import flush, report\n"
    "print('sha', hashlib.sha256(os.environ['API_KEY'].encode()).hexdigest())\n"
    "report(step=0, after_restore=1.0); flush()\n"
)
LOGS_AND_METRICS = (
    "import sys; from kaon.report import flush, report\n"
    "print('line one'); print('line two', file=sys.stderr)\n"
    "for i in range(5): report(step=i, loss=1.0 / (i + 1), accuracy=i / 7)\n"
    "flush(); print('done')\n"
)
RAW_BLOB_KEY = "wsbackup/" + "ab" * 32
INPUTS = [[0.5, -1.0], [2.0, 2.0], [-1.5, 0.25]]
HAS_ARTIFACTS = importlib.util.find_spec("kaon.server.routers.artifacts") is not None
HAS_MODELS = importlib.util.find_spec("kaon.server.services.models") is not None


@dataclass
class Seen:
    """What the control plane held when it was backed up, as its API tells it."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    member_token: str = ""
    deploy_token: str = ""
    predictions: list[Any] = field(default_factory=list)
    artifact: bytes = b""
    model: dict[str, Any] = field(default_factory=dict)
    audit_records: int = 0
    running_job: str = ""


def _predict(gateway: Gateway, token: str, within_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + within_s
    while (response := gateway.call("seed-clf", "predict", token, INPUTS)).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    outputs: list[Any] = response.json()["outputs"]
    return outputs


def _fill(server: ServerProcess, tmp_path: Path) -> Seen:
    seen = Seen()
    client = server.client()
    client.secrets.set("api-key", SECRET_VALUE)
    seen.member_token = client.tokens.create("alice", ["default"], "member").token
    logged = client.jobs.submit([PY, "-c", LOGS_AND_METRICS], name="logger", cpu=0.5)
    train = client.jobs.submit(
        ["python", "train.py", "--epochs", "3"], workdir=EXAMPLE, name="train", cpu=1
    )
    for job in (logged, train):
        assert client.jobs.wait(job.id, timeout=240).status is JobStatus.SUCCEEDED
    client.deployments.create("seed-clf", from_job=train.id, spec={"resources": {"cpu": 0.5}})
    client.deployments.wait_ready("seed-clf", timeout=180)
    seen.deploy_token = client.deployments.create_token("seed-clf").token
    gateway = Gateway(server.running())
    try:
        seen.predictions = _predict(gateway, seen.deploy_token)
    finally:
        gateway.close()
    if HAS_ARTIFACTS:
        folder = tmp_path / "weights"
        folder.mkdir()
        (folder / "weights.bin").write_bytes(os.urandom(3 * 2**20 + 17))  # several chunks
        seen.artifact = (folder / "weights.bin").read_bytes()
        client.artifacts.push("weights", folder)
    if HAS_MODELS:
        client.models.register("clf", from_job=train.id, alias="prod")
        seen.model = client.models.get("clf").model_dump(mode="json")
    LocalBlobStore(server.home / "artifacts").put(RAW_BLOB_KEY, [b"stored as is", b"\0" * 9])
    for job in client.jobs.list():
        seen.jobs[job.id] = job.model_dump(mode="json")
        seen.metrics[job.id] = [m.model_dump(mode="json") for m in client.jobs.metrics(job.id)]
        seen.logs[job.id] = client.jobs.logs(job.id)
    assert seen.metrics[logged.id] and "line one" in seen.logs[logged.id]
    return seen


def _back_up_while_running(server: ServerProcess, seen: Seen, file: Path, db: str) -> None:
    client = server.client()
    job = client.jobs.submit(
        [PY, "-c", "import time; print('running', flush=True); time.sleep(300)"], cpu=0.5
    )
    deadline = time.monotonic() + 60
    while client.jobs.get(job.id).status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.1)
    seen.running_job = job.id
    made = backup_cli("create", file, server.home, db)
    assert made.exit_code == 0, made.output
    assert made.result["contents"]["tables"]["jobs"] >= 4
    audit = client.audit.verify()
    assert audit.ok
    seen.audit_records = audit.checked


def _check(server: ServerProcess, seen: Seen) -> None:
    client = server.client()
    jobs = {job.id: job for job in client.jobs.list()}
    assert set(jobs) == set(seen.jobs) | {seen.running_job}
    for job_id, before in seen.jobs.items():
        assert jobs[job_id].model_dump(mode="json") == before
        metrics = [m.model_dump(mode="json") for m in client.jobs.metrics(job_id)]
        assert metrics == seen.metrics[job_id]
        assert client.jobs.logs(job_id) == seen.logs[job_id]
    # The job that ran during the backup lost its worker with its machine: it is found
    # lost, as after a crash, and not left "running" forever.
    deadline = time.monotonic() + 60
    while (lost := client.jobs.get(seen.running_job)).status is JobStatus.RUNNING:
        assert time.monotonic() < deadline, lost
        time.sleep(0.2)
    assert "lost" in lost.message or lost.restart_count > 0, lost
    alice = Client(server.url, token=seen.member_token).whoami()
    assert alice.token == "alice" and alice.role == "member"
    reader = client.jobs.submit([PY, "-c", PRINT_SECRET], env={"API_KEY": {"secret": "api-key"}})
    assert client.jobs.wait(reader.id, timeout=60).status is JobStatus.SUCCEEDED
    assert hashlib.sha256(SECRET_VALUE.encode()).hexdigest() in client.jobs.logs(reader.id)
    # New rows take new ids (PostgreSQL's sequences were moved past the restored ones).
    assert [m.name for m in client.jobs.metrics(reader.id)] == ["after_restore"]
    stored = LocalBlobStore(server.home / "artifacts")
    assert b"".join(stored.get(RAW_BLOB_KEY)) == b"stored as is" + b"\0" * 9
    if HAS_ARTIFACTS:
        out = server.home.parent / "downloaded"
        client.artifacts.download("weights", out)
        assert (out / "weights.bin").read_bytes() == seen.artifact
    if HAS_MODELS:
        assert client.models.get("clf").model_dump(mode="json") == seen.model
    audit = client.audit.verify()
    assert audit.ok and audit.checked >= seen.audit_records
    verified = CliRunner().invoke(
        app,
        ["audit", "verify"],
        env={
            "KAON_URL": server.url,
            "KAON_TOKEN": server.client().token,
            "KAON_HOME": str(server.home.parent / "cli-home"),
        },
    )
    assert verified.exit_code == 0 and "intact" in verified.output, verified.output
    # The replica that ran before was lost with its machine: a new one takes its place.
    gateway = Gateway(server.running())
    try:
        answered = _predict(gateway, seen.deploy_token, 240)
        flat = [value for row in seen.predictions for value in row]
        assert [value for row in answered for value in row] == pytest.approx(flat, rel=1e-6)
    finally:
        gateway.close()


@pytest.mark.e2e
def test_restore_drill(tmp_path: Path, db_url: str, target_db_url: str) -> None:
    source = ServerProcess(tmp_path / "home", db_url)
    source.start()
    file = tmp_path / "kaon.backup"
    try:
        seen = _fill(source, tmp_path)
        _back_up_while_running(source, seen, file, db_url)
    finally:
        source.kill(signal.SIGTERM)
        kill_workers(source.home)
    vault = tmp_path / "vault"  # the master key, kept apart from the backup
    vault.mkdir()
    shutil.copy2(source.home / MASTER_KEY_FILE, vault / MASTER_KEY_FILE)
    shutil.rmtree(source.home)
    drop_database(db_url)

    home = tmp_path / "new-home"
    home.mkdir(mode=0o700)
    shutil.copy2(vault / MASTER_KEY_FILE, home / MASTER_KEY_FILE)
    assert backup_cli("verify", file, home, target_db_url).exit_code == 0
    restored = backup_cli("restore", file, home, target_db_url)
    assert restored.exit_code == 0, restored.output
    assert (
        restored.result["contents"]
        == backup_cli("verify", file, home, target_db_url).result["contents"]
    )
    target = ServerProcess(home, target_db_url)
    target.start()
    try:
        _check(target, seen)
    finally:
        target.kill(signal.SIGTERM)
        kill_workers(home)
