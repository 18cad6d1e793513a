"""Workers as users of their own (a control plane run as root, ``KAON_WORKER_UIDS``): a
job of one workspace, run as its workspace's uid, reads nothing of the control plane's
and nothing of another workspace's, while its own folders work as before.

Needs root to switch users; elsewhere these tests skip. The commands are shell
commands: the test's Python may live under a folder closed to other users.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from kaon.sdk.client import Client
from kaon.server.config import normalize_database_url
from kaon.server.security.uids import DEFAULT_WORKER_UIDS, worker_uids_setting, workspace_uids
from tests.conftest import RunningServer, ThreadServer, test_settings
from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run workers as users")
UIDS = (40000, 40999)

OWN_WORK = """
id -u
echo secret-of-a > secret.txt
echo weights > "$KAON_CHECKPOINT_DIR/model.bin"
echo scratch > "$HOME/note" && echo scratch > "$TMPDIR/note" && echo home-ok
"""

# $1: the control plane's home; $2: the other workspace's job.
PRYING = """
id -u
for target in "$1/server.key" "$1/kaon.db" "$1/runs/$2/code/secret.txt" \\
    "$1/checkpoints/$2/model.bin" "$1/runs/$2/1/0/launch.json" "$1/runs/$2/1/0/log"; do
  cat "$target" && echo "READ $target"
done
for folder in "$1" "$1/runs" "$1/blobs" "$1/runs/$2/code" "$1/checkpoints/$2"; do
  ls "$folder" && echo "LISTED $folder"
done
exit 0
"""


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A control plane whose home sits in a folder every user may enter, so only the
    home's own modes keep a worker out: no sandbox (``tests/security/test_sandbox.py``
    checks bubblewrap on top of them)."""
    with uids_server(sandbox="off") as running:
        yield running


@contextlib.contextmanager
def uids_server(sandbox: str, db_url: str | None = None) -> Iterator[RunningServer]:
    """A control plane with ``KAON_WORKER_UIDS`` and ``KAON_SANDBOX`` = `sandbox`, its
    home in a folder every user may enter; on `db_url`, or a SQLite file in the home."""
    base = Path(tempfile.mkdtemp(prefix="kaon-uids-"))
    os.chmod(base, 0o755)
    url = db_url or normalize_database_url(str(base / "home" / "kaon.db"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("KAON_SANDBOX", sandbox)  # read by the executor as the plane starts
            with ThreadServer(test_settings(base / "home", url, worker_uids=UIDS)) as running:
                yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(client: Client, script: str, *args: str) -> tuple[str, str]:
    job = client.jobs.submit(["/bin/sh", "-c", script, "sh", *args], cpu=0.5)
    done = client.jobs.wait(job.id, timeout=60)
    log = client.jobs.logs(job.id)
    assert done.status is JobStatus.SUCCEEDED, log
    return job.id, log


class TestWorkersAsOtherUsers:
    def test_a_job_reaches_its_own_folders_and_nothing_else(self, server: RunningServer) -> None:
        with server.client() as admin:
            admin.request("POST", "/api/v1/workspaces", json={"name": "team-b"})
            job_a, log_a = _run(admin, OWN_WORK)
        with server.client(workspace="team-b") as team_b:
            _, log_b = _run(team_b, PRYING, str(server.settings.home), job_a)

        uid_a, uid_b = int(log_a.split()[0]), int(log_b.split()[0])
        assert UIDS[0] <= uid_a <= UIDS[1] and UIDS[0] <= uid_b <= UIDS[1]
        assert uid_a != uid_b
        assert "home-ok" in log_a
        home = server.settings.home
        assert (home / "runs" / job_a / "code" / "secret.txt").stat().st_uid == uid_a

        assert "READ" not in log_b and "LISTED" not in log_b, log_b
        assert "secret-of-a" not in log_b and "weights" not in log_b
        assert log_b.count("Permission denied") >= 8, log_b

    def test_uids_are_distinct_and_stable(self) -> None:
        first = workspace_uids(["ws-a", "ws-b"], UIDS)
        more = workspace_uids(["ws-a", "ws-b", "ws-c"], UIDS)
        assert len(set(more.values())) == 3
        assert {k: more[k] for k in first} == first  # a new workspace moves no one
        tight = workspace_uids([f"ws-{i}" for i in range(10)], (50000, 50009))
        assert sorted(tight.values()) == list(range(50000, 50010))


class TestTheDefaultAsRoot:
    def test_a_root_control_plane_runs_no_job_as_root_unless_told(self) -> None:
        """Started as root with no ``KAON_WORKER_UIDS``, a control plane runs jobs as
        users of `DEFAULT_WORKER_UIDS`; ``off`` is the only way to run them as root."""
        base = Path(tempfile.mkdtemp(prefix="kaon-default-uids-"))
        os.chmod(base, 0o755)
        home = base / "home"
        server = ServerProcess(
            home, normalize_database_url(str(home / "kaon.db")), {"KAON_WORKER_UIDS": ""}
        )
        try:
            server.start()
            with server.client() as client:
                _, log = _run(client, "id -u")
            assert DEFAULT_WORKER_UIDS[0] <= int(log.split()[0]) <= DEFAULT_WORKER_UIDS[1]
        finally:
            server.kill()
            shutil.rmtree(base, ignore_errors=True)

    def test_the_setting(self) -> None:
        assert worker_uids_setting(None, euid=0) == DEFAULT_WORKER_UIDS
        assert worker_uids_setting("", euid=0) == DEFAULT_WORKER_UIDS
        assert worker_uids_setting(None, euid=1000) is None  # an ordinary user cannot switch
        assert worker_uids_setting("off", euid=0) is None
        assert worker_uids_setting("30000-30999", euid=0) == (30000, 30999)
        with pytest.raises(ValueError, match="from 1000 up"):
            worker_uids_setting("0-10", euid=0)


def test_a_command_its_user_may_not_run_says_what_to_do(
    server: RunningServer, tmp_path: Path
) -> None:
    closed = tmp_path / "closed"  # like /root: 0700, root's
    closed.mkdir(mode=0o700)
    script = closed / "train.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o755)
    with server.client() as client:
        job = client.jobs.submit([str(script)], cpu=0.5)
        done = client.jobs.wait(job.id, timeout=60)
        log = client.jobs.logs(job.id)
    assert done.status is JobStatus.FAILED
    assert "Permission denied" in log and "KAON_WORKER_UIDS=off" in log, log
