"""The registry end to end with real processes (SQLite: the database paths are covered on
both databases by test_registry_api.py): train with kaon.train in a job, register it, deploy
``--model clf:production`` with the CLI, call it through the gateway, register a second
model, move the alias and watch the deployment roll to it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaon.cli.main import app
from kaon.core.deployments import DeploymentView
from kaon.core.jobs import JobStatus
from kaon.core.replicas import ReplicaStatus
from kaon.sdk.client import Client
from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway

pytest.importorskip("torch")
EXAMPLE = Path(__file__).parents[2] / "examples" / "binary_classifier"
X = [[0.5, -1.0], [2.0, 2.0]]


def cli(kaon: CliRunner, *args: str) -> object:
    result = kaon.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def train(client: Client, *args: str) -> str:
    job = client.jobs.submit(["python", "train.py", *args], workdir=EXAMPLE, cpu=1)
    done = client.jobs.wait(job.id, timeout=180)
    assert done.status is JobStatus.SUCCEEDED, client.jobs.logs(job.id)
    return job.id


def predict(gateway: Gateway, name: str, token: str) -> list[list[float]]:
    deadline = time.monotonic() + 15
    while (response := gateway.call(name, "predict", token, X)).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    outputs: list[list[float]] = response.json()["outputs"]
    return outputs


def rolled(client: Client, name: str, generation: int, timeout: float = 120) -> DeploymentView:
    """The deployment once only replicas of `generation` serve."""
    deadline = time.monotonic() + timeout
    while True:
        view = client.deployments.get(name)
        live = [r for r in view.replicas if r.state.is_live()]
        ready = [r for r in live if r.state is ReplicaStatus.READY]
        if ready and all(r.generation == generation for r in live):
            return view
        assert time.monotonic() < deadline, view.model_dump_json(indent=1)
        time.sleep(0.2)


@pytest.mark.e2e
def test_deploy_from_the_registry_and_roll_by_moving_the_alias(
    sqlite_server: RunningServer, kaon: CliRunner
) -> None:
    client = sqlite_server.client()
    first = train(client, "--epochs", "1", "--seed", "0")
    v1 = cli(kaon, "model", "register", "clf", "--from-job", first, "--alias", "production")
    assert isinstance(v1, dict) and v1["version"] == 1 and v1["aliases"] == ["production"]
    assert "loss" in v1["metrics"] and v1["source_job_id"] == first
    created = cli(kaon, "deploy", "create", "clf-api", "--model", "clf:production", "--cpu", "0.5")
    assert isinstance(created, dict) and created["spec"]["model"] == "clf:production"
    assert created["spec"]["snapshot"] == client.jobs.get(first).spec.snapshot  # its code
    token = client.deployments.create_token("clf-api").token
    gateway = Gateway(sqlite_server)
    try:
        before = predict(gateway, "clf-api", token)
        assert all(0.0 <= o[0] <= 1.0 for o in before)
        second = train(client, "--epochs", "6", "--seed", "1")
        v2 = cli(kaon, "model", "register", "clf", "--from-job", second)
        assert isinstance(v2, dict) and v2["version"] == 2 and v2["aliases"] == []
        one, two = client.artifacts.get("clf:1"), client.artifacts.get("clf:2")
        assert one.digest != two.digest, (one.files, two.files)
        assert client.deployments.get("clf-api").generation == 1  # not followed yet
        moved = cli(kaon, "model", "alias", "clf", "production", "2")
        assert isinstance(moved, dict) and moved["aliases"] == {"production": 2}
        view = rolled(client, "clf-api", generation=2)
        assert view.generation == 2 and view.spec.model == "clf:production"
        deadline = time.monotonic() + 20  # once the gateway has dropped the old replica
        while (after := predict(gateway, "clf-api", token)) == before:
            assert time.monotonic() < deadline, "the gateway still answers with the old model"
            time.sleep(0.2)
        assert all(predict(gateway, "clf-api", token) == after for _ in range(5))
        assert after[1][0] > after[0][0]  # and it learned the blobs as well
        shown = cli(kaon, "model", "show", "clf")
        assert isinstance(shown, dict)
        assert [(v["version"], v["aliases"]) for v in shown["versions"]] == [
            (2, ["production"]),
            (1, []),
        ]
        refused = kaon.invoke(app, ["model", "delete", "clf:2"])
        assert refused.exit_code != 0 and "production" in refused.output
        assert cli(kaon, "model", "delete", "clf:1")["version"] == 1  # type: ignore[index]
    finally:
        gateway.close()
