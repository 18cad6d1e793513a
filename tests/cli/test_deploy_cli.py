"""`kaon deploy` against a real control plane on loopback (SQLite) with real replica
processes: what a waiting command says while it waits, how it ends when a replica crashes
or cannot be placed, and what `get` and `list` say about replicas that wait or ended."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kaon.cli import render
from kaon.cli.main import app
from tests.conftest import RunningServer, free_port

EXIT_FAILED, EXIT_INPUT, EXIT_TIMEOUT = 1, 2, 6
SMALL = ("--cpu", "0.5", "--memory", "256Mi")
ENDED = ("failed", "stopped")

SERVICE = """
import os

import kaon


class Echo(kaon.Service):
    def setup(self) -> None:
        if os.environ.get("FAIL_SETUP"):
            raise FileNotFoundError("weights.pt is missing")

    @kaon.handler
    def ping(self) -> str:
        return "pong"
"""


@pytest.fixture
def kaon(
    sqlite_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    """A CLI runner pointed at the test server, with its own KAON_HOME and cwd, and a
    console wide enough that table cells are not wrapped mid-sentence."""
    home = tmp_path / "client-home"
    home.mkdir()
    monkeypatch.setenv("KAON_URL", sqlite_server.url)
    monkeypatch.setenv("KAON_TOKEN", sqlite_server.token)
    monkeypatch.setenv("KAON_HOME", str(home))
    for wide in (render.console, render.err):  # xdist fixes 80 columns at import
        monkeypatch.setattr(wide, "width", 400)
    monkeypatch.delenv("KAON_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "svc.py").write_text(SERVICE)
    return folder


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


def get_json(runner: CliRunner, *args: str) -> Any:
    result = run(runner, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class TestWaiting:
    def test_a_crashing_setup_stops_the_wait_with_its_traceback(
        self, kaon: CliRunner, service_dir: Path
    ) -> None:
        started = time.monotonic()
        result = run(kaon, "deploy", "create", "broken", "--path", str(service_dir),
                     "--service", "svc:Echo", *SMALL, "--env", "FAIL_SETUP=1", "--json",
                     "--timeout", "120")  # fmt: skip
        assert result.exit_code == EXIT_FAILED, result.output
        assert time.monotonic() - started < 60
        view = json.loads(result.stdout)  # stdout stays JSON; the rest went to stderr
        assert view["name"] == "broken"
        assert "failed" in [r["state"] for r in view["replicas"]]
        assert re.search(r"replica r-\w+ \(generation 1\): starting, ", result.stderr)
        assert "is failing: replica" in result.stderr
        assert "Traceback" in result.stderr
        assert "FileNotFoundError: weights.pt is missing" in result.stderr
        assert "kaon deploy logs broken --replica r-" in result.stderr

    def test_an_update_whose_new_replica_crashes_fails_while_the_old_one_serves(
        self, kaon: CliRunner, service_dir: Path
    ) -> None:
        created = run(kaon, "deploy", "create", "echo", "--path", str(service_dir),
                      "--service", "svc:Echo", *SMALL)  # fmt: skip
        assert created.exit_code == 0, created.output
        assert "echo ready" in created.stdout
        updated = run(kaon, "deploy", "update", "echo", "--env", "FAIL_SETUP=1", "--wait",
                      "--timeout", "120")  # fmt: skip
        assert updated.exit_code == EXIT_FAILED, updated.output
        assert "echo: updating" in updated.stderr
        assert re.search(r"replica r-\w+ \(generation 2\): failed", updated.stderr)
        assert "weights.pt is missing" in updated.stderr
        view = get_json(kaon, "deploy", "get", "echo")
        assert view["ready_replicas"] == 1  # the old generation still serves

    def test_a_full_pool_is_named_at_update_and_in_get_and_list(
        self, kaon: CliRunner, service_dir: Path
    ) -> None:
        created = run(kaon, "deploy", "create", "big", "--path", str(service_dir),
                      "--service", "svc:Echo", "--cpu", "4", "--memory", "256Mi")  # fmt: skip
        assert created.exit_code == 0, created.output
        assert "warning" not in created.stderr
        # The test node has 8 CPUs: a job holding the other 4 leaves no room for a new
        # replica beside the old one.
        submitted = run(kaon, "job", "run", "--no-workdir", "--cpu", "4", "--detach", "--json",
                        "--", "python", "-c", "import time; time.sleep(120)")  # fmt: skip
        job = json.loads(submitted.stdout)
        until(lambda: get_json(kaon, "job", "get", job["id"])["status"] == "running", 30, "job")
        updated = run(kaon, "deploy", "update", "big", "--env", "V=2", "--wait",
                      "--timeout", "3")  # fmt: skip
        assert updated.exit_code == EXIT_TIMEOUT, updated.output
        assert "warning: a new replica (4 CPU, 0.25 GiB) does not fit the pool's free " \
               "capacity now (at most 0 CPU" in updated.stderr  # fmt: skip
        waiting = "waiting for resources: no fitting node for 4 CPU"
        assert re.search(rf"\(generation 2\): starting, {waiting}", updated.stderr)

        view = get_json(kaon, "deploy", "get", "big")
        new = [r for r in view["replicas"] if r["generation"] == 2]
        assert new[0]["waiting_reason"].startswith("no fitting node for 4 CPU")
        assert new[0]["job_status"] == "queued"
        assert waiting in run(kaon, "deploy", "get", "big").stdout
        listed = run(kaon, "deploy", "list")
        assert "1 replica waits for resources: no fitting node for 4 CPU" in listed.stdout

        more = run(kaon, "deploy", "create", "more", "--path", str(service_dir),
                   "--service", "svc:Echo", "--cpu", "1", "--no-wait", "--json")  # fmt: skip
        assert more.exit_code == 0, more.output
        assert json.loads(more.stdout)["warnings"] == [
            line.removeprefix("warning: ") for line in more.stderr.splitlines()
        ]
        assert "a new replica (1 CPU" in more.stderr


class TestSource:
    @pytest.fixture
    def offline(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
        """No control plane at all: a command that uploaded anything would exit 5."""
        monkeypatch.setenv("KAON_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("KAON_TOKEN", "kaon_unused")
        monkeypatch.setenv("KAON_HOME", str(tmp_path))
        monkeypatch.chdir(tmp_path)
        return CliRunner()

    def test_a_path_without_a_service_is_refused_before_the_upload(
        self, offline: CliRunner, service_dir: Path
    ) -> None:
        result = run(offline, "deploy", "create", "x", "--path", str(service_dir))
        assert result.exit_code == EXIT_INPUT, result.output
        assert "give --service module:Class to serve a kaon.Service from --path, " \
               "or --from-job JOB to serve a job's model" in result.stderr  # fmt: skip

    def test_both_sources_are_refused(self, offline: CliRunner, service_dir: Path) -> None:
        result = run(offline, "deploy", "create", "x", "--path", str(service_dir),
                     "--service", "svc:Echo", "--from-job", "j-000000000000")  # fmt: skip
        assert result.exit_code == EXIT_INPUT, result.output
        assert "either --service or --from-job, not both" in result.stderr


class TestEndedReplicas:
    def test_a_crash_loop_lists_live_replicas_and_only_the_newest_ended(
        self, kaon: CliRunner, service_dir: Path
    ) -> None:
        created = run(kaon, "deploy", "create", "loop", "--path", str(service_dir),
                      "--service", "svc:Echo", *SMALL, "--env", "FAIL_SETUP=1",
                      "--no-wait")  # fmt: skip
        assert created.exit_code == 0, created.output
        views: list[Any] = []

        def hidden() -> bool:
            views.append(get_json(kaon, "deploy", "get", "loop"))
            return bool(views[-1]["hidden_replicas"])

        until(hidden, 90, "a fourth crash")
        view = views[-1]
        states = [r["state"] for r in view["replicas"]]
        assert len([s for s in states if s in ENDED]) == 3
        assert states == sorted(states, key=lambda s: s in ENDED)  # live ones first
        created_at = [r["created_at"] for r in view["replicas"] if r["state"] in ENDED]
        assert created_at == sorted(created_at, reverse=True)  # the newest ended ones
        shown = run(kaon, "deploy", "get", "loop")
        assert re.search(r"\(\d+ older ended replica\(s\) not shown\)", shown.stdout)
