"""What a new user hits on the command line, against a real control plane on loopback
(SQLite): each refusal names what to change, ids are never cut and may be shortened, and
every command's last line matches the state it reports."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from kaon.cli import render
from kaon.cli.main import app
from kaon.core.errors import InvalidSpecError
from tests.conftest import RunningServer

PY = sys.executable
EXIT_INPUT, EXIT_NOT_FOUND = 2, 3


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


def submit(runner: CliRunner, *args: str) -> str:
    """Submit a job detached (0.5 CPU, no upload) and return its id."""
    result = run(runner, "job", "run", "--no-workdir", "--cpu", "0.5", "-d", "--json", *args)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def spec_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


class TestWhatNoNodeHas:
    def test_a_label_no_node_has_is_named_with_those_nodes_have(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir", "--label", "zone=rack-2",
                     "--", PY, "-c", "pass")  # fmt: skip
        assert result.exit_code == EXIT_INPUT, result.output
        assert "(labels)" in result.stderr
        assert "no node has the label zone=rack-2; nodes have: kaon.io/pool=local" in " ".join(
            result.stderr.split()
        )

    def test_a_gpu_type_no_node_has_is_named(self, kaon: CliRunner, tmp_path: Path) -> None:
        spec = spec_file(tmp_path, "command: [python, -c, pass]\nresources: {gpu_type: Z9}\n")
        result = run(kaon, "job", "run", "-f", spec)
        assert result.exit_code == EXIT_INPUT, result.output
        assert "(resources.gpu_type)" in result.stderr
        assert "no node has GPUs of type Z9" in " ".join(result.stderr.split())

    def test_memory_is_told_in_units_people_read(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir", "--memory", "100Gi", "--", PY, "-c", "")
        assert result.exit_code == EXIT_INPUT, result.output
        message = " ".join(result.stderr.split())
        assert "no node has 100 GiB of memory (the largest has 16 GiB)" in message
        assert "bytes" not in message


class TestStringCommand:
    def test_yaml_splits_it_as_a_shell_would(self, kaon: CliRunner, tmp_path: Path) -> None:
        spec = spec_file(tmp_path, """command: python -c "print(3)"\nresources: {cpu: 0.5}\n""")
        result = run(kaon, "job", "run", "-f", spec)
        assert result.exit_code == 0, result.output
        assert result.stdout == "3\n"

    def test_unbalanced_quotes_are_bad_input(self, kaon: CliRunner, tmp_path: Path) -> None:
        spec = spec_file(tmp_path, """command: python -c "print(3)\n""")
        result = run(kaon, "job", "run", "-f", spec)
        assert result.exit_code == EXIT_INPUT, result.output
        assert "No closing quotation" in result.output

    def test_the_api_refuses_a_string_asking_a_list(self, sqlite_server: RunningServer) -> None:
        with sqlite_server.client() as client:
            with pytest.raises(InvalidSpecError, match="must be a list of arguments") as e:
                client.jobs.submit(spec={"command": 'python -c "print(3)"'})
            assert e.value.field == "command"
            assert client.jobs.list() == []


class TestJobIds:
    def test_job_list_never_cuts_ids_at_80_columns(
        self, kaon: CliRunner, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(render.console, "width", 80)
        job_id = submit(kaon, "--name", "a-long-name-" + "x" * 40, "--", PY, "-c", "exit(3)")
        run(kaon, "job", "wait", job_id, "--timeout", "30")
        listed = run(kaon, "job", "list")
        assert listed.exit_code == 0, listed.output
        assert job_id in listed.stdout
        assert max(len(line) for line in listed.stdout.splitlines()) <= 80

    def test_a_unique_prefix_names_a_job(self, kaon: CliRunner) -> None:
        job_id = submit(kaon, "--", PY, "-c", "print('hi')")
        waited = run(kaon, "job", "wait", job_id[:6], "--timeout", "30")
        assert waited.exit_code == 0, waited.output
        got = run(kaon, "job", "get", job_id[:6], "--json")
        assert json.loads(got.stdout)["id"] == job_id
        assert run(kaon, "job", "logs", job_id[:6]).stdout == "hi\n"

    def test_an_ambiguous_prefix_names_the_candidates(self, kaon: CliRunner) -> None:
        ids = [submit(kaon, "--", PY, "-c", "pass") for _ in range(2)]
        result = run(kaon, "job", "get", "j-")
        assert result.exit_code != 0
        message = " ".join(result.stderr.split())
        assert "several job ids" in message and all(i in message for i in ids)


class TestCancel:
    def test_the_last_line_is_the_final_state(self, kaon: CliRunner) -> None:
        job_id = submit(kaon, "--", PY, "-c", "import time; print('up', flush=True); "
                        "time.sleep(60)")  # fmt: skip
        _wait_for_log(kaon, job_id, "up")
        result = run(kaon, "job", "cancel", job_id[:8])
        assert result.exit_code == 0, result.output
        assert result.stderr.strip().splitlines()[-1] == f"job {job_id} cancelled"
        got = json.loads(run(kaon, "job", "get", job_id, "--json").stdout)
        assert (got["status"], got["message"]) == ("cancelled", "cancelled by a user")

    def test_json_shows_the_cancelled_job(self, kaon: CliRunner) -> None:
        blocker = submit(kaon, "--cpu", "8", "--", PY, "-c", "import time; time.sleep(60)")
        queued = submit(kaon, "--", PY, "-c", "pass")
        result = run(kaon, "job", "cancel", queued, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["status"] == "cancelled"
        assert run(kaon, "job", "cancel", blocker).exit_code == 0


class TestSpellings:
    def test_cpu_and_cpus_are_both_accepted(self, kaon: CliRunner) -> None:
        quota = run(kaon, "quota", "set", "default", "--cpu", "6", "--borrow-cpu", "1", "--json")
        assert quota.exit_code == 0, quota.output
        assert (json.loads(quota.stdout)["quota"]["cpus"]) == 6
        job_id = submit(kaon, "--cpus", "1.5", "--", PY, "-c", "pass")
        got = json.loads(run(kaon, "job", "get", job_id, "--json").stdout)
        assert got["spec"]["resources"]["cpu"] == 1.5

    def test_quota_help_says_borrow_limit_is_gpus_only(self, kaon: CliRunner) -> None:
        result = run(kaon, "quota", "set", "--help")
        assert "GPUs only" in " ".join(result.stdout.split())


class TestMetrics:
    def test_a_name_never_reported_is_not_found(self, kaon: CliRunner) -> None:
        code = "import kaon; kaon.report(step=0, loss=0.5, acc=0.9)"
        job_id = submit(kaon, "--", PY, "-c", code)
        assert run(kaon, "job", "wait", job_id, "--timeout", "30").exit_code == 0
        result = run(kaon, "job", "metrics", job_id, "--name", "nope")
        assert result.exit_code == EXIT_NOT_FOUND, result.output
        message = " ".join(result.stderr.split())
        assert "no metric named 'nope'; it reported: acc, loss" in message
        assert "loss" in run(kaon, "job", "metrics", job_id, "--name", "loss").stdout


def _wait_for_log(runner: CliRunner, job_id: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in run(runner, "job", "logs", job_id).stdout:
        assert time.monotonic() < deadline, f"{text!r} never appeared in the log"
        time.sleep(0.05)
