"""Nothing of the control plane's is handed to a job, tested against a real server
process and real jobs.

- Everything under KAON_HOME is its user's only (0700 folders, 0600 files), the SQLite
  database with its WAL and SHM files included; a home made with looser modes is repaired
  on start.
- The bootstrap admin token and the database URL are not in the server's
  ``/proc/<pid>/environ`` (the server re-executes itself without them), and a job that
  reads that file finds neither.
- A job's HOME and TMPDIR are its own, in its run folder, never the server's.
- No launch file and no log holds the job's token or an admin token.
- Run as root, another user (as a worker of another uid would be) can read nothing under
  KAON_HOME: not the key that derives job tokens, not the database. As one user this
  cannot hold, and docs/security.md says so.

SQLite only: what is tested is the file system and processes, and only SQLite keeps the
database under KAON_HOME.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.core.jobs import JobStatus
from kaon.server.config import normalize_database_url
from kaon.server.security.tokens import KEY_FILE, job_token, load_token_key
from tests.conftest import ADMIN_TOKEN, kill_workers
from tests.e2e.conftest import ServerProcess

PY = sys.executable
NOBODY = 65534

# What a curious job looks at: its HOME and TMPDIR, the server's environment, ~/.kaon.
PROBE = r"""
import hashlib, json, os, sys
server_pid = int(sys.argv[1])
try:
    with open(f"/proc/{server_pid}/environ", "rb") as f:
        server_env = f.read().decode(errors="replace")
except OSError as e:
    server_env = f"unreadable: {e}"
home, tmp = os.environ["HOME"], os.environ["TMPDIR"]
with open(os.path.join(tmp, "scratch"), "w") as f:
    f.write("mine")
print(json.dumps({
    "home": home,
    "tmpdir": tmp,
    "server_env": server_env,
    "own_env": sorted(k for k in os.environ if k.startswith("KAON_")),
    "token_sha256": hashlib.sha256(os.environ["KAON_JOB_TOKEN"].encode()).hexdigest(),
    "kaon_dir_in_home": os.path.exists(os.path.expanduser("~/.kaon")),
}))
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One real server process for the module (a start costs a second or two): started
    with the admin token and database URL in its environment, as `kaon up` starts it, and
    with a home whose files an older Kaon left readable by everyone, in a folder every
    user may enter (pytest's own temporary folders are closed to others, which would hide
    what the home's own modes do)."""
    tmp = Path(tempfile.mkdtemp(prefix="kaon-isolation-"))
    os.chmod(tmp, 0o755)
    home = tmp / "home"
    home.mkdir(mode=0o755)
    (home / "leftover.log").write_text("made before the server was this careful\n")
    os.chmod(home / "leftover.log", 0o644)
    process = ServerProcess(home, normalize_database_url(str(tmp / "kaon.db")))
    process.env["KAON_DATABASE_URL"] = str(home / "kaon.db")
    process.start()
    try:
        yield process
    finally:
        if process.proc is not None:
            process.kill(signal.SIGTERM)
        kill_workers(home)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def probe(server: ServerProcess) -> dict[str, object]:
    """What a job found when it looked around (run once for the module)."""
    assert server.proc is not None
    with server.client() as client:
        job = client.jobs.submit([PY, "-c", PROBE, str(server.proc.pid)], cpu=0.5)
        done = client.jobs.wait(job.id, timeout=60)
        log = client.jobs.logs(job.id)
    assert done.status is JobStatus.SUCCEEDED, log
    found: dict[str, object] = json.loads(log.strip().splitlines()[-1])
    found["job_id"] = job.id
    return found


def _loose(path: Path) -> bool:
    return bool(stat.S_IMODE(path.lstat().st_mode) & 0o077)


class TestHome:
    def test_everything_under_the_home_is_its_users_only(
        self, server: ServerProcess, probe: dict[str, object]
    ) -> None:
        home = server.home
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("kaon.db", "kaon.db-wal", "kaon.db-shm", KEY_FILE, "leftover.log"):
            assert (home / name).exists(), name
        loose = [
            f"{p.relative_to(home)} {oct(stat.S_IMODE(p.lstat().st_mode))}"
            for p in [home, *home.rglob("*")]
            if not p.is_symlink() and not p.is_socket() and _loose(p)
        ]
        assert loose == []

    def test_a_job_has_a_home_and_tmpdir_of_its_own(
        self, server: ServerProcess, probe: dict[str, object]
    ) -> None:
        runs = server.home / "runs" / str(probe["job_id"])
        assert Path(str(probe["home"])).is_relative_to(runs)
        assert Path(str(probe["tmpdir"])).is_relative_to(runs)
        assert probe["home"] != str(Path.home())
        assert probe["kaon_dir_in_home"] is False
        assert (Path(str(probe["tmpdir"])) / "scratch").read_text() == "mine"


class TestCredentials:
    def test_the_servers_environment_holds_no_credential(self, server: ServerProcess) -> None:
        assert server.proc is not None
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
        assert ADMIN_TOKEN.encode() not in environ
        assert b"KAON_BOOTSTRAP_TOKEN" not in environ
        assert b"KAON_DATABASE_URL" not in environ
        with server.client() as client:
            assert client.whoami().role == "admin"  # the token was taken, not lost

    def test_a_job_finds_no_credential_of_the_server(self, probe: dict[str, object]) -> None:
        assert ADMIN_TOKEN not in str(probe["server_env"])
        assert "KAON_BOOTSTRAP_TOKEN" not in str(probe["server_env"])
        own = probe["own_env"]
        assert isinstance(own, list)
        assert "KAON_BOOTSTRAP_TOKEN" not in own and "KAON_DATABASE_URL" not in own
        assert "KAON_JOB_TOKEN" in own  # its own token, and only that

    def test_no_launch_file_or_log_holds_a_token(
        self, server: ServerProcess, probe: dict[str, object]
    ) -> None:
        job_id = str(probe["job_id"])
        token = job_token(load_token_key(server.home), job_id, 1)
        assert hashlib.sha256(token.encode()).hexdigest() == probe["token_sha256"]
        runs = server.home / "runs" / job_id
        assert list(runs.glob("*/*/launch.json")), "the job left no launch file"
        assert not list(runs.glob("*/*/handed.json")), "the token file was not deleted"
        files = [p for p in server.home.rglob("*") if p.is_file() and p.name != "kaon.db"]
        holding = [
            str(p.relative_to(server.home))
            for p in files
            if token.encode() in p.read_bytes() or ADMIN_TOKEN.encode() in p.read_bytes()
        ]
        assert holding == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
class TestAnotherUser:
    """What a worker running as another uid (or any other local user) can reach."""

    @pytest.mark.parametrize("name", [KEY_FILE, "kaon.db", "kaon.db-wal", "runs"])
    def test_reads_nothing_under_the_home(self, server: ServerProcess, name: str) -> None:
        assert _as_nobody(["ls", "--", str(server.home.parent)]).returncode == 0  # it may look
        target = server.home / name
        assert target.exists()
        result = _as_nobody(["ls" if target.is_dir() else "cat", "--", str(target)])
        assert result.returncode != 0
        assert "Permission denied" in result.stderr


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
