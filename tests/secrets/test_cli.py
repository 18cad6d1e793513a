"""`kaon secret`, `kaon admin rotate-master-key` and a job that prints its secret, through
the command line against a real control plane (SQLite)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kaon.cli.main import app

PY = sys.executable
VALUE = "cli-canary-3b7e0d"


def run(runner: CliRunner, *args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=stdin)


class TestSecretCommands:
    def test_set_from_stdin_and_file_list_delete(self, kaon: CliRunner, tmp_path: Path) -> None:
        first = run(kaon, "secret", "set", "api-key", stdin=VALUE + "\n")
        assert first.exit_code == 0, first.output
        assert "version 1" in first.stdout and VALUE not in first.output
        (tmp_path / "v.txt").write_text(VALUE + "-2")
        second = run(kaon, "secret", "set", "api-key", "--from-file", str(tmp_path / "v.txt"))
        assert "version 2" in second.stdout
        listed = run(kaon, "secret", "list", "--json")
        assert [(s["name"], s["version"]) for s in json.loads(listed.stdout)] == [("api-key", 2)]
        assert VALUE not in listed.stdout and "value" not in listed.stdout
        table = run(kaon, "secret", "list")
        assert "api-key" in table.stdout and "admin" in table.stdout
        assert run(kaon, "secret", "delete", "api-key").exit_code == 0
        assert json.loads(run(kaon, "secret", "list", "--json").stdout) == []
        assert run(kaon, "secret", "delete", "api-key").exit_code == 3  # not found

    def test_an_empty_value_is_refused(self, kaon: CliRunner) -> None:
        result = run(kaon, "secret", "set", "empty", stdin="")
        assert result.exit_code == 2
        assert "empty" in result.stderr

    def test_rotate_master_key(self, kaon: CliRunner) -> None:
        run(kaon, "secret", "set", "api-key", stdin=VALUE)
        result = run(kaon, "admin", "rotate-master-key", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["rewrapped"] == 1


@pytest.mark.e2e
def test_job_logs_show_stars_for_the_value(kaon: CliRunner, tmp_path: Path) -> None:
    run(kaon, "secret", "set", "api-key", stdin=VALUE)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "command: [" + json.dumps(PY) + ", -c, \"import os; print('key:', os.environ['K'])\"]\n"
        "env: {K: {secret: api-key}}\n"
        "resources: {cpu: 0.5}\n"
    )
    ran = run(kaon, "job", "run", "-f", str(spec), "--no-workdir")
    assert ran.exit_code == 0, ran.output
    assert "key: ***" in ran.stdout and VALUE not in ran.output
    job_id = json.loads(run(kaon, "job", "list", "--json").stdout)[0]["id"]
    logs = run(kaon, "job", "logs", job_id)
    assert logs.stdout == "key: ***\n"
    shown = run(kaon, "job", "get", job_id, "--json")
    assert json.loads(shown.stdout)["spec"]["env"] == {"K": {"secret": "api-key"}}
