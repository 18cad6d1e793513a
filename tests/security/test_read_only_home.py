"""A read-only KAON_HOME stops `kaon server` and `kaon up` at start with a clear error,
before any job is looked at: a job queued before stays queued, and runs once the home is
writable again (real processes, SQLite and PostgreSQL).

The home is made read-only with a read-only bind mount in a mount namespace of the
started process (`unshare`), since as root modes alone do not stop a write; as another
user, with its modes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, test_settings
from tests.e2e.conftest import ServerProcess
from tests.security.conftest import QuietServer

KAON = str(Path(sys.executable).with_name("kaon"))
RunReadOnly = Callable[[Path, list[str], dict[str, str]], subprocess.CompletedProcess[str]]
_READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            _READ_ONLY_MOUNT,
            "/tmp",
            "true",
        ],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.fixture
def read_only() -> Iterator[RunReadOnly]:
    """Runs a command with a folder read-only for it; the folder stays writable here."""
    root = os.geteuid() == 0
    if root and not _can_mount():
        pytest.skip("as root, a read-only home needs a mount namespace (unshare)")

    def run(
        folder: Path, argv: list[str], env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        if root:
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _READ_ONLY_MOUNT,
                    str(folder), *argv]  # fmt: skip
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        mode = folder.stat().st_mode
        folder.chmod(0o500)
        try:
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(mode)

    yield run


def _queue_a_job(home: Path, db_url: str) -> str:
    """A job stored as queued (the control plane's reconcilers do not run here)."""
    with QuietServer(test_settings(home, db_url)) as running:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        spec = {"command": ["true"], "resources": {"cpu": 1}}
        made = httpx.post(
            f"{running.url}/api/v1/workspaces/default/jobs", json=spec, headers=headers
        )
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def test_server_refuses_a_read_only_home_and_queued_jobs_wait(
    tmp_path: Path, db_url: str, read_only: RunReadOnly
) -> None:
    home = tmp_path / "home"
    job = _queue_a_job(home, db_url)
    server = ServerProcess(home, db_url)
    done = read_only(home, [sys.executable, "-m", "kaon.server"], server.env)
    assert done.returncode != 0
    assert "KAON_HOME" in done.stderr and "not writable" in done.stderr, done.stderr
    assert "Read-only file system" in done.stderr or "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr

    server.start()  # writable again: the job was waiting, not failed
    try:
        client = server.client()
        deadline = time.monotonic() + 60
        while (status := client.jobs.get(job).status.value) not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, f"job still {status}"
            time.sleep(0.2)
        assert status == "succeeded"
    finally:
        server.kill()


def test_kaon_up_refuses_a_read_only_home(tmp_path: Path, read_only: RunReadOnly) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "KAON_HOME": str(home)}
    env.pop("KAON_URL", None)
    done = read_only(home, [KAON, "up", "--port", "1", "--gateway-port", "2"], env)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "not writable" in out, out
    assert "Traceback" not in out
    assert not list(home.iterdir())  # no log or pid file was half-written
