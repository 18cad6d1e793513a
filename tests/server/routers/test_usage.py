"""A job's resource usage end to end, over real HTTP with real workers: the supervisor
samples the worker's process tree and posts it with the job's token; `kaon job top`
shows it while the job runs; another workspace never sees it; and it outlives the job
by the retention, then goes. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaon.cli.main import app
from kaon.core.errors import NotFoundError
from kaon.core.jobs import JobStatus
from kaon.core.usage import JobUsage
from tests.conftest import RunningServer, ThreadServer, test_settings

# Burns a core in the worker itself and holds ~200 MB in a child: the whole tree counts.
BURN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
    "time.sleep(120)"])
end = time.monotonic() + 120
while time.monotonic() < end:
    pass
"""
RETENTION_S = 4.0


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    """Workers sampled twice a second; usage kept `RETENTION_S` after a job ends and
    looked for five times a second, so expiry is seen within a test."""
    settings = test_settings(
        tmp_path / "home",
        db_url,
        usage_interval_s=0.5,
        usage_retention_s=RETENTION_S,
        usage_cleanup_interval_s=0.2,
    )
    with ThreadServer(settings) as running:
        yield running


@pytest.fixture
def kaon(server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    home = tmp_path / "client-home"
    home.mkdir()
    monkeypatch.setenv("KAON_URL", server.url)
    monkeypatch.setenv("KAON_TOKEN", server.token)
    monkeypatch.setenv("KAON_HOME", str(home))
    monkeypatch.delenv("KAON_WORKSPACE", raising=False)
    return CliRunner()


def top_json(kaon: CliRunner, job_id: str) -> JobUsage:
    result = kaon.invoke(app, ["job", "top", job_id, "--json"])
    assert result.exit_code == 0, result.output
    return JobUsage.model_validate(json.loads(result.stdout))


def wait_for(check: Callable[[], bool], what: str, within_s: float = 60) -> None:
    """Poll `check` until it holds; for waits on real processes, never to assert that
    something did not happen."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.e2e
class TestJobUsage:
    def test_top_shows_a_busy_jobs_cpu_and_memory_while_it_runs(
        self, server: RunningServer, kaon: CliRunner
    ) -> None:
        client = server.client()
        job = client.jobs.submit([sys.executable, "-c", BURN], cpu=1, memory="1Gi")
        seen: list[JobUsage] = []

        def busy() -> bool:
            seen.append(top_json(kaon, job.id))
            latest = [w.latest for w in seen[-1].workers if w.latest is not None]
            return any((s.cpu or 0) > 0.5 and (s.rss_bytes or 0) > 150 * 2**20 for s in latest)

        try:
            wait_for(busy, "the job's usage to show a busy core and ~200 MB")
        finally:
            client.jobs.cancel(job.id)
        usage = seen[-1]
        assert usage.status is JobStatus.RUNNING
        assert [w.worker for w in usage.workers] == [0]
        worker = usage.workers[0]
        assert worker.latest == worker.series[-1]
        assert worker.latest is not None and worker.latest.gpu_util is None  # no GPU: none
        table = kaon.invoke(app, ["job", "top", job.id])
        assert table.exit_code == 0 and "MEMORY (GiB)" in table.stdout
        # usage has its own answer: the reported metrics are not crowded by it
        assert client.jobs.metrics(job.id) == []

    def test_another_workspace_gets_404(self, server: RunningServer) -> None:
        admin = server.client()
        job = admin.jobs.submit([sys.executable, "-c", "pass"], cpu=0.5)
        admin.workspaces.create("team-b")
        secret = admin.tokens.create("b-only", workspaces=["team-b"]).token
        with pytest.raises(NotFoundError):
            server.client(token=secret, workspace="team-b").jobs.usage(job.id)
        with pytest.raises(NotFoundError):
            server.client(token=secret, workspace="default").jobs.usage(job.id)

    def test_usage_outlives_the_job_then_expires(
        self, server: RunningServer, kaon: CliRunner
    ) -> None:
        client = server.client()
        busy = "import time\nend = time.monotonic() + 2\nwhile time.monotonic() < end: pass"
        job = client.jobs.submit([sys.executable, "-c", busy], cpu=0.5)
        assert client.jobs.wait(job.id, timeout=60).status is JobStatus.SUCCEEDED
        kept = client.jobs.usage(job.id)  # ended, and still within the retention
        assert kept.workers and kept.workers[0].series
        watched = kaon.invoke(app, ["job", "top", job.id, "--watch"])  # ended: shows, returns
        assert watched.exit_code == 0 and "CPU (cores)" in watched.stdout, watched.output
        wait_for(lambda: not client.jobs.usage(job.id).workers, "the usage to expire")
        assert client.jobs.get(job.id).status is JobStatus.SUCCEEDED  # the job stays
