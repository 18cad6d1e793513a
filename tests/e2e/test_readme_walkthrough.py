"""The README's five commands, read from the README and run as they are written (with
`JOB` replaced by the id the training job printed): a secret, a training job, a
registered model, a deployment that reads the secret, a prediction through the gateway.
A README edit that breaks the walkthrough breaks this test."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaon.cli.main import app
from kaon.core.secrets import SecretRef
from kaon.server.routers.console import GATEWAY_ENV
from tests.conftest import RunningServer
from tests.e2e.conftest import Gateway

pytest.importorskip("torch")
ROOT = Path(__file__).parents[2]
BLOCK = re.compile(r"<!-- walkthrough[^>]*-->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->", re.S)


def walkthrough() -> list[str]:
    found = BLOCK.search((ROOT / "README.md").read_text())
    assert found, "README.md has no walkthrough block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def run(kaon: CliRunner, line: str, job: str | None) -> tuple[str, str]:
    """One README line: ``echo -n VALUE | kaon ...`` feeds VALUE on standard input."""
    stdin = None
    if line.startswith("echo -n "):
        echo, _, line = line.partition("|")
        stdin = shlex.split(echo)[2]
    argv = shlex.split(line, comments=True)
    assert argv[0] == "kaon", line
    argv = [job if a == "JOB" and job else a for a in argv[1:]]
    result = kaon.invoke(app, argv, input=stdin)
    assert result.exit_code == 0, f"{line}\n{result.output}"
    return result.stdout, result.stderr


@pytest.mark.e2e
def test_the_readme_walkthrough_runs_as_written(
    sqlite_server: RunningServer, kaon: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = walkthrough()
    assert len(lines) == 5
    monkeypatch.chdir(ROOT)  # the README's paths are the repository's
    gateway = Gateway(sqlite_server)
    monkeypatch.setenv(GATEWAY_ENV, gateway.url)
    try:
        job = None
        outputs = []
        for line in lines:
            stdout, stderr = run(kaon, line, job)
            outputs.append(stdout)
            if job is None and (submitted := re.search(r"submitted job (j-[0-9a-f]+)", stderr)):
                job = submitted.group(1)
        assert job is not None, "the training command printed no job id"
        answer = json.loads(outputs[-1])
        assert len(answer["outputs"]) == 2 and all(0 <= o[0] <= 1 for o in answer["outputs"])
        client = sqlite_server.client()
        assert "sk-demo-4242" not in str(client.secrets.list())
        spec = client.deployments.get("classifier").spec
        assert spec.model == "classifier:production"
        assert spec.env["API_KEY"] == SecretRef(secret="serving-key")  # a reference only
    finally:
        gateway.close()
