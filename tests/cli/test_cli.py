"""The `kaon` command line against a real control plane on loopback (SQLite): what it
prints and the exit codes scripts rely on (see kaon.cli.main)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kaon.cli.main import app
from tests.conftest import free_port

PY = sys.executable
EXIT_FAILED, EXIT_INPUT, EXIT_AUTH, EXIT_UNREACHABLE = 1, 2, 4, 5


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


class TestJobRun:
    def test_run_prints_the_output_and_exits_0(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir", "--cpu", "0.5", "--",
                     "python", "-c", "print('hello')")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "hello\n" in result.stdout
        assert "succeeded" in result.stderr

    def test_a_failing_command_exits_1(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir", "--cpu", "0.5", "--",
                     PY, "-c", "import sys; print('oops'); sys.exit(3)")  # fmt: skip
        assert result.exit_code == EXIT_FAILED, result.output
        assert "oops" in result.stdout
        assert "exited with code 3" in result.stderr

    def test_more_gpus_than_the_pool_has_is_bad_input(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir", "--gpus", "99", "--", PY, "-c", "pass")
        assert result.exit_code == EXIT_INPUT, result.output
        assert "resources.gpus" in result.stderr
        jobs = json.loads(run(kaon, "job", "list", "--json").stdout)
        assert jobs == []

    def test_no_command_is_bad_input(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir")
        assert result.exit_code == EXIT_INPUT
        assert "give a command" in result.stderr

    def test_a_spec_file_uploads_its_workdir(self, kaon: CliRunner, tmp_path: Path) -> None:
        project = tmp_path / "project"
        (project / "data").mkdir(parents=True)
        (project / "data" / "input.txt").write_text("payload-42")
        (project / "read.py").write_text("print(open('data/input.txt').read())\n")
        spec = tmp_path / "job.yaml"
        spec.write_text(
            "name: read-file\n"
            "workdir: project\n"
            "command: [python, read.py]\n"
            "resources: {cpu: 0.5, memory: 256Mi}\n"
        )
        result = run(kaon, "job", "run", "-f", str(spec), "--json")
        assert result.exit_code == 0, result.output
        assert "payload-42" in result.stdout
        jobs = json.loads(run(kaon, "job", "list", "--json").stdout)
        assert [j["name"] for j in jobs] == ["read-file"]
        assert jobs[0]["status"] == "succeeded"
        assert len(jobs[0]["spec"]["snapshot"]) == 64
        assert jobs[0]["spec"]["resources"]["memory"] == 256 * 2**20


class TestListing:
    def test_job_list_and_get_as_json(self, kaon: CliRunner) -> None:
        submitted = run(kaon, "job", "run", "--no-workdir", "--cpu", "0.5", "--detach",
                        "--json", "--", PY, "-c", "pass")  # fmt: skip
        assert submitted.exit_code == 0, submitted.output
        job_id = json.loads(submitted.stdout)["id"]
        waited = run(kaon, "job", "wait", job_id, "--timeout", "30")
        assert waited.exit_code == 0, waited.output
        listed = run(kaon, "job", "list", "--json")
        assert listed.exit_code == 0
        jobs = json.loads(listed.stdout)
        assert [(j["id"], j["status"]) for j in jobs] == [(job_id, "succeeded")]
        got = json.loads(run(kaon, "job", "get", job_id, "--json").stdout)
        assert got["workers"][0]["exit_code"] == 0

    def test_a_missing_job_exits_3(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "get", "j-000000000000")
        assert result.exit_code == 3
        assert "not found" in result.stderr

    def test_nodes_as_json(self, kaon: CliRunner) -> None:
        result = run(kaon, "nodes", "--json")
        assert result.exit_code == 0, result.output
        (node,) = json.loads(result.stdout)
        assert node["cpu"] == 8.0
        assert node["memory"] == 16 * 2**30
        assert node["cpu_allocated"] == 0


class TestErrors:
    def test_a_bad_token_exits_4(self, kaon: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KAON_TOKEN", "kaon_not-a-token")
        result = run(kaon, "job", "list")
        assert result.exit_code == EXIT_AUTH
        assert "invalid or revoked token" in result.stderr
        assert "kaon login" in result.stderr

    def test_an_unreachable_server_exits_5(
        self, kaon: CliRunner, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAON_URL", f"http://127.0.0.1:{free_port()}")
        result = run(kaon, "job", "list")
        assert result.exit_code == EXIT_UNREACHABLE
        assert "cannot reach" in result.stderr


class TestTokens:
    def test_create_list_revoke(self, kaon: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        created = run(kaon, "token", "create", "ci-bot", "--json")
        assert created.exit_code == 0, created.output
        secret = json.loads(created.stdout)["token"]
        listed = run(kaon, "token", "list", "--json")
        assert listed.exit_code == 0
        assert secret not in listed.output
        assert {t["name"] for t in json.loads(listed.stdout)} == {"admin", "ci-bot"}
        table = run(kaon, "token", "list")
        assert "ci-bot" in table.stdout and secret not in table.output
        revoked = run(kaon, "token", "revoke", "ci-bot")
        assert revoked.exit_code == 0, revoked.output
        assert "revoked token ci-bot" in revoked.stdout
        states = {
            t["name"]: t["revoked_at"]
            for t in json.loads(run(kaon, "token", "list", "--json").stdout)
        }
        assert states["ci-bot"] is not None and states["admin"] is None
        monkeypatch.setenv("KAON_TOKEN", secret)
        assert run(kaon, "whoami").exit_code == EXIT_AUTH

    def test_a_member_token_cannot_create_admins(
        self, kaon: CliRunner, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secret = json.loads(run(kaon, "token", "create", "member", "--json").stdout)["token"]
        monkeypatch.setenv("KAON_TOKEN", secret)
        result = run(kaon, "token", "create", "root", "--role", "admin")
        assert result.exit_code == EXIT_AUTH
        assert "admin" in result.stderr
