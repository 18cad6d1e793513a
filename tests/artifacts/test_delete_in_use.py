"""A delete never breaks what uses it, over the real API on SQLite and PostgreSQL: an
artifact version a model version holds, or a job not yet ended reads, is refused (409
naming the user); deleting a model version releases its artifact only when the artifact
was made for that model and nothing else uses it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kaon.core.errors import ConflictError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.conftest import RunningServer

PY = sys.executable


def cancel(client: Client, job_id: str) -> None:
    """Cancel, again while the API says the job changed meanwhile (its launch moved it)."""
    for _ in range(50):
        try:
            client.jobs.cancel(job_id)
            return
        except ConflictError:
            continue
    client.jobs.cancel(job_id)


def folder(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / f"{name}-{content}"
    path.mkdir()
    (path / "weights.bin").write_text(content)
    return path


def blob_rows(server: RunningServer, client: Client, ref: str) -> set[str]:
    """The blobs the version names that the workspace still holds (HEAD answers 200)."""
    files = client.artifacts.get(ref).files or []
    return {f.sha256 for f in files if client.artifacts.has_blob(f.sha256)}


def test_an_artifact_a_model_version_holds_is_not_deleted(client: Client, tmp_path: Path) -> None:
    ref = client.artifacts.push("weights", folder(tmp_path, "w", "one"), kind="model").ref
    client.models.register("clf", artifact=ref)
    with pytest.raises(ConflictError, match=r"model version clf:1"):
        client.artifacts.delete(ref)
    assert client.artifacts.get(ref).ref == "weights:1"
    # pushed on its own and registered by name: deleting the version leaves it
    client.models.delete("clf:1")
    assert client.artifacts.get(ref).ref == "weights:1"
    assert client.artifacts.delete(ref).ref == "weights:1"
    with pytest.raises(NotFoundError):
        client.artifacts.get(ref)


def test_deleting_a_model_version_releases_the_artifact_made_for_it(
    server: RunningServer, client: Client, tmp_path: Path
) -> None:
    v1 = client.models.push("churn", folder(tmp_path, "c", "one"))
    v2 = client.models.push("churn", folder(tmp_path, "c", "two"))
    shas = blob_rows(server, client, v1.artifact)
    assert shas
    client.models.delete("churn:1")
    with pytest.raises(NotFoundError):
        client.artifacts.get(v1.artifact)
    assert not any(client.artifacts.has_blob(s) for s in shas)
    assert client.artifacts.get(v2.artifact).ref == v2.artifact  # the other stays


def test_an_artifact_two_model_versions_share_goes_with_the_last(
    client: Client, tmp_path: Path
) -> None:
    v1 = client.models.push("churn", folder(tmp_path, "c", "one"))
    client.models.register("churn", artifact=v1.artifact)  # churn:2, the same artifact
    client.models.delete("churn:1")
    assert client.artifacts.get(v1.artifact).ref == v1.artifact  # churn:2 holds it
    with pytest.raises(ConflictError, match=r"model version churn:2"):
        client.artifacts.delete(v1.artifact)
    client.models.delete("churn:2")
    with pytest.raises(NotFoundError):
        client.artifacts.get(v1.artifact)


def test_an_input_of_a_job_not_ended_is_not_deleted(client: Client, tmp_path: Path) -> None:
    ref = client.artifacts.push("digits", folder(tmp_path, "d", "1,2,3"), kind="dataset").ref
    spec = {
        "command": [PY, "-c", "import time; time.sleep(60)"],
        "inputs": [{"artifact": ref, "path": "data"}],
        "resources": {"cpu": 0.5},
    }
    job = client.jobs.submit(spec=spec)
    with pytest.raises(ConflictError, match=rf"job {job.id}"):
        client.artifacts.delete(ref)
    cancel(client, job.id)
    assert client.jobs.wait(job.id, timeout=60).status is JobStatus.CANCELLED
    assert client.artifacts.delete(ref).ref == ref
