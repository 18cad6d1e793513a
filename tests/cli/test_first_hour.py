"""A new user's first hour, as README.md and docs/ walk it: what each step prints is what
the page says, on a machine without GPUs. The CLI runs in process against a real control
plane on loopback (SQLite) with real worker processes; the gateway steps run `kaon up`'s
real processes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import typer.testing
from typer.core import TyperGroup
from typer.testing import CliRunner, Result

import kaon as kaon_sdk
from kaon.cli import render
from kaon.cli.main import app, build_command
from kaon.core.jobs import JobStatus
from tests.conftest import WORKER_UIDS_OFF, RunningServer, kill_workers

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PY = sys.executable
EXIT_INPUT = 2


@pytest.fixture
def kaon(
    sqlite_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    """A CLI runner pointed at the test server, with its own KAON_HOME and cwd, and the
    80 columns of a default terminal (what the tables must fit without cutting)."""
    home = tmp_path / "client-home"
    home.mkdir()
    monkeypatch.setenv("KAON_URL", sqlite_server.url)
    monkeypatch.setenv("KAON_TOKEN", sqlite_server.token)
    monkeypatch.setenv("KAON_HOME", str(home))
    monkeypatch.delenv("KAON_WORKSPACE", raising=False)
    for console in (render.console, render.err):
        monkeypatch.setattr(console, "width", 80)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(app, list(args))


def submit(runner: CliRunner, *args: str) -> str:
    result = run(runner, "job", "run", "--no-workdir", "--cpu", "0.5", "-d", "--json", *args)
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class TestOneNameForANode:
    def test_kaon_nodes_names_a_node_as_jobs_and_waiting_reasons_do(
        self, kaon: CliRunner, sqlite_server: RunningServer
    ) -> None:
        job_id = submit(kaon, "--", PY, "-c", "pass")
        with sqlite_server.client() as client:
            job = client.jobs.wait(job_id, timeout=60)
            node = client.nodes.list()[0]
        assert job.status is JobStatus.SUCCEEDED and job.workers[0].node == node.id
        shown = run(kaon, "job", "get", job_id).stdout
        assert re.search(rf"worker 0\s+{node.id} pid", shown), shown
        table = run(kaon, "nodes").stdout
        assert table.splitlines()[1].split()[0] == node.id, table  # not the host name


class TestTablesFitWithoutCutting:
    def test_ids_names_and_labels_wrap_at_80_columns_and_never_end_in_an_ellipsis(
        self, kaon: CliRunner
    ) -> None:
        name = "a-rather-long-name-for-a-sweep-run-17"
        job_id = submit(kaon, "--name", name, "--", PY, "-c", "")
        listing = run(kaon, "job", "list").stdout
        nodes = run(kaon, "nodes").stdout
        for out in (listing, nodes):
            assert "…" not in out, out
            assert max(len(line) for line in out.splitlines()) <= 80, out
        assert job_id in listing
        assert "kaon.io/pool=local" in nodes

    def test_a_succeeded_job_says_no_more_than_its_status(
        self, kaon: CliRunner, sqlite_server: RunningServer
    ) -> None:
        job_id = submit(kaon, "--", PY, "-c", "")
        with sqlite_server.client() as client:
            client.jobs.wait(job_id, timeout=60)
        row = next(line for line in run(kaon, "job", "list").stdout.splitlines() if job_id in line)
        assert "succeeded" in row and "exited" not in row


class TestFirstSteps:
    def test_asking_for_a_gpu_on_a_pool_without_gpus_says_so_plainly(
        self, kaon: CliRunner, sqlite_server: RunningServer
    ) -> None:
        with sqlite_server.client() as client:
            if any(node.gpus for node in client.nodes.list()):
                pytest.skip("this machine has GPUs")
        result = run(kaon, "job", "run", "--no-workdir", "--gpus", "1", "--", PY, "-c", "")
        assert result.exit_code == EXIT_INPUT, result.output
        message = " ".join(result.stderr.split())
        assert "error (resources.gpus): the pool has no GPUs" in message
        assert "ask for none to run on CPUs" in message and "1 GPUs" not in message

    def test_a_detached_job_says_how_to_follow_it(self, kaon: CliRunner) -> None:
        result = run(kaon, "job", "run", "--no-workdir", "-d", "--cpu", "0.5", "--", PY, "-c", "")
        assert result.exit_code == 0, result.output
        job_id = re.search(r"submitted job (j-[0-9a-f]+)", result.stderr)
        assert job_id is not None, result.stderr
        assert f"follow it: kaon job logs {job_id[1]} -f" in result.stderr


class TestMetrics:
    def test_a_job_that_reported_nothing_says_so_instead_of_an_empty_table(
        self, kaon: CliRunner, sqlite_server: RunningServer
    ) -> None:
        job_id = submit(kaon, "--", PY, "-c", "")
        with sqlite_server.client() as client:
            client.jobs.wait(job_id, timeout=60)
        result = run(kaon, "job", "metrics", job_id)
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
        assert "has reported no metrics" in " ".join(result.stderr.split())


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


class TestHelp:
    def test_no_command_shows_python_types_or_a_type_for_a_flag(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``--help <bool>``, ``command... <list[str]>``, ``<float range>``: Python's words
        for what is, to the user, a flag, a word repeated and a number. The runner is made
        to invoke the command `kaon` runs (`build_command`), not the bare Typer app."""
        kaon: TyperGroup = build_command()
        monkeypatch.setattr(typer.testing, "_get_command", lambda _app: kaon)
        paths = list(_commands(kaon))
        assert ("job", "run") in paths and ("deploy", "update") in paths
        runner = CliRunner()
        for path in paths:
            result = runner.invoke(app, [*path, "--help"], terminal_width=100)
            assert result.exit_code == 0, (path, result.output)
            for odd in ("<bool>", "<list[", " range>"):
                assert odd not in result.output, (path, odd, result.output)
        run_help = runner.invoke(app, ["job", "run", "--help"], terminal_width=100).output
        assert re.search(r"command\.\.\.\s+<str>", run_help), run_help
        assert re.search(r"--env\s+-e\s+<str>", run_help), run_help


class TestReadme:
    def test_quotas_are_set_on_a_workspace_the_readme_creates_first(self) -> None:
        create = README.index("kaon workspace create team-a")
        assert create < README.index("kaon quota set team-a")

    def test_ports_are_documented_for_kaon_up_and_the_demo(self) -> None:
        assert "kaon up --port" in README and "--gateway-port" in README
        assert "make demo PORT=" in README and "GATEWAY_PORT=" in README

    def test_every_example_path_the_readme_names_exists(self) -> None:
        paths = set(re.findall(r"examples/[\w./-]*\w", README))
        assert "examples/binary_classifier/job.yaml" in paths
        missing = [p for p in paths if not (ROOT / p).exists()]
        assert not missing, missing

    def test_the_first_jobs_run_without_gpus(self) -> None:
        """Only the command the README marks as refused without GPUs asks for one."""
        block = README.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
        asking = [line for line in block.splitlines() if "--gpus" in line]
        assert len(asking) == 1, asking
        assert "refused (exit 2)" in block.split(asking[0], 1)[1].split("kaon job list")[0]

    @pytest.mark.e2e
    def test_the_sdk_snippet_prints_what_its_comments_say(
        self, sqlite_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The README's Python block, run as written from the repository root (two DDP
        workers of the seed classifier over gloo)."""
        snippet = README.split("```python\n", 1)[1].split("```", 1)[0]
        monkeypatch.setenv("KAON_URL", sqlite_server.url)
        monkeypatch.setenv("KAON_TOKEN", sqlite_server.token)
        monkeypatch.setenv("KAON_HOME", str(tmp_path / "client-home"))
        monkeypatch.delenv("KAON_WORKSPACE", raising=False)
        monkeypatch.chdir(ROOT)
        printed: list[str] = []
        exec(snippet, {"kaon": kaon_sdk, "print": lambda v: printed.append(str(v))})
        status_comment = re.search(r"print\(client\.jobs\.wait\(job\.id\)\.status\)\s+# (\w+)",
                                   snippet)  # fmt: skip
        assert status_comment is not None, snippet
        assert printed[0] == status_comment[1] == "succeeded"
        assert "test accuracy:" in printed[1]


def _load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaon_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_prints_the_accuracy_as_the_jobs_log_does() -> None:
    """The log line above it says ``test accuracy: 0.96``; the summary must not then say
    96.50%."""
    train = (ROOT / "examples" / "binary_classifier" / "train.py").read_text()
    assert 'print(f"test accuracy: {accuracy:.2f}")' in train
    assert _load_demo().accuracy_text(0.965) == f"{0.965:.2f}" == "0.96"


# --- the gateway steps of docs/serving.md, on `kaon up`'s real processes -----------------

KAON = [sys.executable, "-c", "from kaon.cli.main import main; main()"]

SERVICE = """
import kaon


class Echo(kaon.Service):
    @kaon.handler
    def ping(self) -> str:
        return "pong"
"""


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports in a row")


@pytest.fixture
def kaon_up(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """`kaon` as a user runs it, with a home of its own and `kaon up` on free ports; the
    control plane and the gateway are stopped afterwards, and so are the replicas, which
    `kaon down` leaves running by design."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAON_")} | WORKER_UIDS_OFF
    env.update(KAON_HOME=str(home), COLUMNS="200", KAON_LOCAL_NODES="1")

    def kaon(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KAON, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    port = _free_port_pair()
    try:
        started = kaon("up", "--port", str(port), "--gateway-port", str(port + 1))
        assert started.returncode == 0, started.stderr
        yield kaon
    finally:  # also after a failed start: what did start must not outlive the test
        kaon("down", timeout=60)
        kill_workers(home)


@pytest.mark.e2e
def test_a_deployment_token_works_the_moment_kaon_prints_it(
    kaon_up: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/serving.md: ``TOKEN=$(kaon deploy token NAME -q)`` then ``curl`` at once. A
    gateway learns of a token on its next read of the routes; before, it said 401. The
    token command runs in process, so the request follows it within milliseconds."""
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "svc.py").write_text(SERVICE)
    created = kaon_up("deploy", "create", "echo", "--path", "svc", "--service", "svc:Echo",
                      "--cpu", "0.5", "--memory", "256Mi")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "TOKEN=$(kaon deploy token echo -q)" in created.stdout  # where a token comes from
    home = tmp_path / "home"
    gateway = json.loads((home / "config.json").read_text())["gateway_url"]
    for name in ("KAON_URL", "KAON_TOKEN", "KAON_WORKSPACE", "KAON_GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAON_HOME", str(home))
    for _ in range(3):  # each token is new to the gateway
        printed = CliRunner().invoke(app, ["deploy", "token", "echo", "-q"])
        assert printed.exit_code == 0, printed.output
        token = printed.stdout.strip()
        assert re.fullmatch(r"kaon_\S+", token), printed.stdout  # the token and nothing else
        answer = httpx.post(
            f"{gateway}/echo/ping", json={}, headers={"Authorization": f"Bearer {token}"}
        )
        assert (answer.status_code, answer.json()) == (200, "pong"), answer.text
