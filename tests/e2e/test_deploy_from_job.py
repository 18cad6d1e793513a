"""Train the seed classifier as a Kaon job, deploy it from the job with one call, and get
predictions and explanations through the gateway with a deployment token."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from kaon.core.errors import InvalidSpecError
from kaon.core.jobs import JobStatus
from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway

pytest.importorskip("torch")
EXAMPLE = Path(__file__).parents[2] / "examples" / "binary_classifier"


@pytest.mark.e2e
def test_deploy_trained_classifier_from_job(sqlite_server: RunningServer) -> None:
    """SQLite only: training a model costs tens of seconds, and the database paths it
    takes are covered on both databases by test_deployments.py."""
    gateway = Gateway(sqlite_server)
    try:
        _train_deploy_and_call(sqlite_server, gateway)
    finally:
        gateway.close()


def _train_deploy_and_call(server: RunningServer, gateway: Gateway) -> None:
    client = server.client()
    job = client.jobs.submit(["python", "train.py", "--epochs", "3"], workdir=EXAMPLE, cpu=1)
    assert client.jobs.wait(job.id, timeout=180).status is JobStatus.SUCCEEDED
    client.deployments.create("seed-clf", from_job=job.id, spec={"resources": {"cpu": 0.5}})
    client.deployments.wait_ready("seed-clf", timeout=120)
    token = client.deployments.create_token("seed-clf").token
    deadline = time.monotonic() + 10
    while (
        response := gateway.call("seed-clf", "predict", token, [[0.5, -1.0], [2.0, 2.0]])
    ).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    outputs = response.json()["outputs"]
    assert len(outputs) == 2 and all(0.0 <= o[0] <= 1.0 for o in outputs)
    assert outputs[1][0] > outputs[0][0]  # (2, 2) lies in the positive blob
    explained = gateway.call("seed-clf", "explain", token, [[2.0, 2.0]])
    assert explained.status_code == 200
    assert len(explained.json()["attributions"][0]) == 2
    wrong = gateway.call("seed-clf", "predict", token, [[1.0, 2.0, 3.0]])
    assert wrong.status_code == 422 and "x" in wrong.text


def test_deploy_from_failed_job_is_refused(server: RunningServer) -> None:
    client = server.client()
    job = client.jobs.submit([sys.executable, "-c", "raise SystemExit(1)"], cpu=0.5)
    client.jobs.wait(job.id, timeout=60)
    with pytest.raises(InvalidSpecError) as e:
        client.deployments.create("nope", from_job=job.id)
    assert e.value.field == "from_job"
    with pytest.raises(InvalidSpecError):
        client.deployments.create("nope", from_job="j-000000000000")
