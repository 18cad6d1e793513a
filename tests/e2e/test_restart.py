"""Kill the control plane while jobs run, start it again: running workers are re-adopted,
workers that ended meanwhile get their true exit status, queued jobs still start, and
nothing runs twice. Real processes, SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from tests.e2e.conftest import ServerProcess

PY = sys.executable


def _script(marker: Path, body: str) -> list[str]:
    """A command that appends one line to `marker` each time it starts."""
    return [PY, "-c", f"open({str(marker)!r}, 'a').write('start\\n')\n{body}"]


def _wait(predicate: object, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_restart_readopts_and_loses_nothing(
    server_process: ServerProcess, tmp_path: Path, sig: int
) -> None:
    client = server_process.client()
    long_marker, short_marker, queued_marker = (tmp_path / n for n in ("long", "short", "queued"))
    release = tmp_path / "release"
    long = client.jobs.submit(
        _script(
            long_marker,
            f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)",
        ),
        cpu=4,
    )
    short = client.jobs.submit(
        _script(
            short_marker,
            f"import os, sys, time\n"
            f"while not os.path.exists({str(release)!r}): time.sleep(0.05)\n"
            "sys.exit(7)",
        ),
        cpu=3,
    )
    queued = client.jobs.submit(_script(queued_marker, "print('queued job ran')"), cpu=6)
    _wait(lambda: long_marker.exists() and short_marker.exists(), what="both jobs to start")
    assert client.jobs.get(queued.id).status is JobStatus.QUEUED

    server_process.kill(sig)
    release.touch()  # while the server is down: the short job exits 7, the long one ends too
    _wait(lambda: _exited(server_process.home, short.id), what="the short job to exit")
    server_process.start()
    client = server_process.client()

    assert client.jobs.wait(long.id, timeout=30).status is JobStatus.SUCCEEDED
    failed = client.jobs.wait(short.id, timeout=30)
    assert failed.status is JobStatus.FAILED
    assert failed.workers[0].exit_code == 7
    assert client.jobs.wait(queued.id, timeout=30).status is JobStatus.SUCCEEDED
    assert client.jobs.logs(queued.id) == "queued job ran\n"
    for marker in (long_marker, short_marker, queued_marker):
        assert marker.read_text() == "start\n", f"{marker.name} ran more than once"


@pytest.mark.e2e
def test_running_worker_survives_restart_and_is_followed(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    client = server_process.client()
    release = tmp_path / "release"
    code = (
        f"import os, time\nprint('before', flush=True)\n"
        f"while not os.path.exists({str(release)!r}): time.sleep(0.05)\nprint('after', flush=True)"
    )
    job = client.jobs.submit([PY, "-c", code], cpu=1)
    _wait(lambda: "before" in client.jobs.logs(job.id), what="the job to print")
    pid = client.jobs.get(job.id).workers[0].pid
    server_process.kill(signal.SIGKILL)
    server_process.start()
    client = server_process.client()
    running = client.jobs.get(job.id)
    assert running.status is JobStatus.RUNNING
    assert running.workers[0].pid == pid  # the same process, adopted
    release.touch()
    assert client.jobs.wait(job.id, timeout=30).status is JobStatus.SUCCEEDED
    assert client.jobs.logs(job.id) == "before\nafter\n"


def _exited(home: Path, job_id: str) -> bool:
    return any((home / "runs" / job_id).glob("*/0/exit.json"))
