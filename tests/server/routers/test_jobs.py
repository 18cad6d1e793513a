"""Jobs over real HTTP against the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
import time

import pytest

from kaon.core.errors import ConflictError, NotFoundError
from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from tests.conftest import RunningServer

PY = sys.executable


class TestJobLifecycle:
    def test_trivial_job_succeeds_with_its_log(self, client: Client) -> None:
        job = client.jobs.submit([PY, "-c", "print('hi')"], cpu=0.5)
        assert job.status is JobStatus.QUEUED
        done = client.jobs.wait(job.id, timeout=30)
        assert done.status is JobStatus.SUCCEEDED
        assert client.jobs.logs(job.id) == "hi\n"
        assert done.workers[0].exit_code == 0
        assert done.finished_at is not None

    def test_failing_job_fails_with_its_exit_code(self, client: Client) -> None:
        job = client.jobs.submit([PY, "-c", "import sys; sys.exit(3)"], cpu=0.5)
        done = client.jobs.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert "exited with code 3" in done.message
        assert done.workers[0].exit_code == 3

    def test_retries_then_succeeds(self, client: Client, tmp_path: object) -> None:
        # Fails on its first attempt (restart count 0), succeeds on the next.
        code = "import os, sys; sys.exit(0 if os.environ['KAON_RESTART_COUNT'] != '0' else 5)"
        job = client.jobs.submit([PY, "-c", code], cpu=0.5, max_retries=2)
        done = client.jobs.wait(job.id, timeout=30)
        assert done.status is JobStatus.SUCCEEDED
        assert done.restart_count == 1

    def test_cancel_stops_a_running_job(self, client: Client) -> None:
        job = client.jobs.submit(
            [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"], cpu=0.5
        )
        _wait_for_log(client, job.id, "up")
        client.jobs.cancel(job.id)
        done = client.jobs.wait(job.id, timeout=30)
        assert done.status is JobStatus.CANCELLED
        assert done.workers[0].exit_code is not None

    def test_sigterm_ignored_then_killed_after_grace(self, client: Client) -> None:
        code = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)"
        )
        job = client.jobs.submit([PY, "-c", code], cpu=0.5)
        _wait_for_log(client, job.id, "up")
        client.jobs.cancel(job.id)
        done = client.jobs.wait(job.id, timeout=30)  # grace is 3 s in tests
        assert done.status is JobStatus.CANCELLED
        assert done.workers[0].exit_code == 137

    def test_cancel_of_finished_job_conflicts(self, client: Client) -> None:
        job = client.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        client.jobs.wait(job.id, timeout=30)
        with pytest.raises(ConflictError):
            client.jobs.cancel(job.id)

    def test_timeout_fails_the_job(self, client: Client) -> None:
        job = client.jobs.submit([PY, "-c", "import time; time.sleep(60)"], cpu=0.5, timeout_s=1)
        done = client.jobs.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert "timed out" in done.message

    def test_metrics_reported_from_inside_the_job(self, client: Client) -> None:
        code = (
            "import kaon\n"
            "for i in range(3): kaon.report(step=i, loss=1.0 / (i + 1))\n"
            "kaon.report(acc=0.9)"
        )
        job = client.jobs.submit([PY, "-c", code], cpu=0.5)
        assert client.jobs.wait(job.id, timeout=30).status is JobStatus.SUCCEEDED
        loss = client.jobs.metrics(job.id, name="loss")
        assert [(m.step, m.value) for m in loss] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
        assert [m.value for m in client.jobs.metrics(job.id, name="acc")] == [0.9]


class TestQueueing:
    def test_job_that_does_not_fit_now_waits_then_runs(self, server: RunningServer) -> None:
        client = server.client()
        # The test node has 8 CPUs: the first job takes 6, so the second (4) must wait.
        first = client.jobs.submit([PY, "-c", "import time; time.sleep(1.5)"], cpu=6)
        second = client.jobs.submit([PY, "-c", "pass"], cpu=4)
        _wait_status(client, first.id, JobStatus.RUNNING)
        deadline = time.monotonic() + 10
        while not (waiting := client.jobs.get(second.id)).waiting_reason:
            assert time.monotonic() < deadline, "the queued job never said why it waits"
            time.sleep(0.05)
        assert waiting.status is JobStatus.QUEUED
        assert client.jobs.wait(second.id, timeout=30).status is JobStatus.SUCCEEDED
        first_done = client.jobs.get(first.id)
        assert first_done.finished_at is not None
        assert client.jobs.get(second.id).started_at is not None
        assert first_done.finished_at <= client.jobs.get(second.id).finished_at  # type: ignore[operator]

    def test_node_shows_allocation_while_running(self, client: Client) -> None:
        job = client.jobs.submit(
            [PY, "-c", "import time; print('up', flush=True); time.sleep(30)"], cpu=3, memory="1Gi"
        )
        _wait_for_log(client, job.id, "up")
        node = client.nodes.list()[0]
        assert node.cpu_allocated == 3
        assert node.memory_allocated == 2**30
        client.jobs.cancel(job.id)
        client.jobs.wait(job.id, timeout=30)
        assert client.nodes.list()[0].cpu_allocated == 0


class TestWorkspaces:
    def test_other_workspace_job_is_404(self, server: RunningServer) -> None:
        admin = server.client()
        admin.workspaces.create("team-b")
        secret = admin.tokens.create("b-only", workspaces=["team-b"]).token
        job = admin.jobs.submit([PY, "-c", "pass"], cpu=0.5)
        other = server.client(token=secret, workspace="team-b")
        with pytest.raises(NotFoundError):
            other.jobs.get(job.id)
        with pytest.raises(NotFoundError, match="workspace"):
            server.client(token=secret, workspace="default").jobs.list()
        assert other.jobs.list() == []


def _wait_for_log(client: Client, job_id: str, text: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in client.jobs.logs(job_id):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the log"
        time.sleep(0.05)


def _wait_status(client: Client, job_id: str, status: JobStatus, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while client.jobs.get(job_id).status is not status:
        assert time.monotonic() < deadline, f"job never became {status.value}"
        time.sleep(0.05)
