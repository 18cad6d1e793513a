"""A private view of the file system for workers (bubblewrap, `kaon.executors.sandbox`).

The argument builder is pure and tested everywhere. The rest needs root and ``bwrap``
(as CI has) and skips elsewhere: a real control plane with ``KAON_WORKER_UIDS`` and
``KAON_SANDBOX=bwrap`` (so a machine where bwrap cannot run fails here rather than quietly
running workers without it), whose jobs pry at the control plane, another workspace's job,
the machine's ``/tmp`` and its processes, and still do their own work; and the local
executor on its own, for how a sandboxed worker ends and is stopped. The jobs' commands
are shell commands: the test's Python may live under a folder closed to other users.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kaon.core.errors import PermanentBackendError
from kaon.core.jobs import JobStatus, JobView
from kaon.executors import sandbox
from kaon.executors._shim import _describe
from kaon.executors.base import GangLaunch, NodeInventory, WorkerLaunch, WorkerState
from kaon.executors.local import LocalExecutor
from kaon.executors.sandbox import SandboxPolicy, Tools, WorkerView, bwrap_args, drop_args
from kaon.sdk.client import Client
from kaon.sdk.secrets import secret
from tests.conftest import RunningServer
from tests.security.test_worker_users import UIDS, uids_server

needs_bwrap = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="needs root and bubblewrap (apt-get install bubblewrap) to sandbox workers",
)
MiB = 2**20
NODE = NodeInventory(id="n", name="n", address="127.0.0.1", cpu=8.0, memory=16 * 2**30)


# -- the argument builder (pure) --------------------------------------------------------

HOME = "/srv/kaon"
JOB = f"{HOME}/runs/j"
TMPS = ["--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/var/tmp",
        "--perms", "1777", "--tmpfs", "/dev/shm"]  # fmt: skip
BASE = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
END = ["--unshare-pid", "--die-with-parent", "--chdir"]


def _way(*folders: str) -> list[str]:
    return [arg for f in folders for arg in ("--perms", "0711", "--dir", f)]


def _binds(kind: str, *folders: str) -> list[str]:
    return [arg for f in folders for arg in (kind, f, f)]


ARGV_CASES = {
    "a worker's folders under a hidden home, a GPU, an input, a database file": (
        WorkerView(
            cwd=f"{JOB}/code",
            writable=(
                f"{JOB}/1/0/home",
                f"{JOB}/1/0/tmp",
                f"{JOB}/code",
                f"{HOME}/checkpoints/j",
                f"{JOB}/outputs",
            ),  # fmt: skip
            readable=(f"{HOME}/cache/artifacts/ab",),
            hidden_dirs=(HOME, "/root/.kaon"),
            hidden_files=("/var/lib/kaon.db", f"{HOME}/kaon.db"),
            devices=("/dev/nvidiactl", "/dev/nvidia0"),
        ),
        [
            *BASE,
            *_binds("--dev-bind", "/dev/nvidia0", "/dev/nvidiactl"),
            *TMPS,
            "--perms",
            "0711",
            "--tmpfs",
            HOME,
            "--perms",
            "0711",
            "--tmpfs",
            "/root/.kaon",
            "--ro-bind",
            "/dev/null",
            "/var/lib/kaon.db",  # the one in the home is covered
            *_way(
                f"{HOME}/checkpoints",
                f"{HOME}/cache",
                f"{HOME}/cache/artifacts",
                f"{HOME}/runs",
                JOB,
                f"{JOB}/1",
                f"{JOB}/1/0",
            ),
            *_binds("--bind", f"{HOME}/checkpoints/j"),
            *_binds("--ro-bind", f"{HOME}/cache/artifacts/ab"),
            *_binds(
                "--bind", f"{JOB}/code", f"{JOB}/outputs", f"{JOB}/1/0/home", f"{JOB}/1/0/tmp"
            ),
            *END,
            f"{JOB}/code",
        ],
    ),  # fmt: skip
    "a home under /tmp: /tmp's tmpfs covers it, the way to the folders is made": (
        WorkerView(
            cwd="/tmp/h/runs/j/code",
            writable=("/tmp/h/runs/j/code",),
            hidden_dirs=("/tmp/h",),
            hidden_files=("/tmp/h.db",),
        ),
        [
            *BASE,
            *TMPS,
            *_way("/tmp/h", "/tmp/h/runs", "/tmp/h/runs/j"),
            *_binds("--bind", "/tmp/h/runs/j/code"),
            *END,
            "/tmp/h/runs/j/code",
        ],
    ),  # fmt: skip
    "a folder inside another: the outer bound first, nothing made inside it": (
        WorkerView(cwd="/w/code", writable=("/w/code/out/deep", "/w/code"), hidden_dirs=("/w",)),
        [
            *BASE,
            *TMPS,
            "--perms",
            "0711",
            "--tmpfs",
            "/w",
            *_binds("--bind", "/w/code", "/w/code/out/deep"),
            *END,
            "/w/code",
        ],
    ),  # fmt: skip
    "nothing hidden, folders outside any tmpfs: binds only": (
        WorkerView(cwd="/data/code", writable=("/data/code", "/data/ckpt")),
        [*BASE, *TMPS, *_binds("--bind", "/data/ckpt", "/data/code"), *END, "/data/code"],
    ),
}


@pytest.mark.parametrize("view, argv", ARGV_CASES.values(), ids=ARGV_CASES.keys())
def test_bwrap_args_mount_in_order(view: WorkerView, argv: list[str]) -> None:
    assert bwrap_args(view) == argv


def test_the_user_is_taken_on_inside_by_setpriv_or_python() -> None:
    tools = Tools("/usr/bin/bwrap", "/usr/bin/setpriv", "/usr/bin/env", "/py")
    assert drop_args(tools, 40001) == [
        "/usr/bin/env", "--default-signal=TERM",
        "/usr/bin/setpriv", "--reuid", "40001", "--regid", "40001", "--clear-groups", "--",
    ]  # fmt: skip
    assert drop_args(tools, None) == ["/usr/bin/env", "--default-signal=TERM"]
    bare = Tools("/usr/bin/bwrap", None, None, "/py")
    assert drop_args(bare, 40001) == ["/py", "-I", "-S", "-c", sandbox.DROP_CODE, "40001"]
    assert drop_args(bare, None)[-1] == ""


@pytest.mark.parametrize(
    "mode, uid, wanted",
    [("auto", 40001, True), ("auto", None, False), ("bwrap", None, True),
     ("bwrap", 40001, True), ("off", 40001, False)],
)  # fmt: skip
def test_when_a_worker_is_sandboxed(mode: str, uid: int | None, wanted: bool) -> None:
    assert sandbox.wanted(mode, uid) is wanted


def test_the_setting_is_checked() -> None:
    assert sandbox.parse_mode(" BWRAP ") == "bwrap"
    assert sandbox.parse_mode("") == "auto"
    with pytest.raises(ValueError, match="KAON_SANDBOX must be one of auto, bwrap, off"):
        sandbox.parse_mode("yes")
    with pytest.raises(ValueError, match="KAON_SANDBOX"):
        SandboxPolicy.from_env({"KAON_SANDBOX": "bubblewrap"}, "/srv/kaon")


@pytest.mark.parametrize(
    "status, sandboxed, described",
    [(137, True, (137, "killed by SIGKILL")), (143, True, (143, "killed by SIGTERM")),
     (137, False, (137, None)), (3, True, (3, None)), (-9, True, (137, "killed by SIGKILL")),
     (200, True, (200, None))],
)  # fmt: skip
def test_a_sandbox_reports_a_signal_as_128_plus_n(
    status: int, sandboxed: bool, described: tuple[int, str | None]
) -> None:
    assert _describe(status, sandboxed) == described


def test_without_bwrap_auto_runs_bare_and_bwrap_refuses_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox._probe.cache_clear()
    try:
        assert sandbox.tools_for("auto", 40001) is None
        assert sandbox.tools_for("off", 40001) is None
        with pytest.raises(PermanentBackendError, match="KAON_SANDBOX=bwrap.*not installed"):
            sandbox.tools_for("bwrap", None)
        policy = SandboxPolicy(mode="bwrap", hidden=(str(tmp_path),))
        executor = LocalExecutor(tmp_path / "runs", tmp_path / "ckpt", NODE, sandbox=policy)
        worker = WorkerLaunch(index=0, node_id="n", cpu=0.5, memory=0)
        with pytest.raises(PermanentBackendError, match="KAON_SANDBOX"):
            executor.launch(GangLaunch("j-no", 1, ("/bin/true",), {}, (worker,)))
        assert not (tmp_path / "runs" / "j-no" / "1" / "0").exists()  # no worker begun
    finally:
        sandbox._probe.cache_clear()


@needs_bwrap
def test_the_python_step_takes_on_the_user_and_restores_sigterm() -> None:
    import subprocess

    argv = [
        *drop_args(Tools("", None, None, "/usr/bin/python3"), 40002),
        "sh",
        "-c",
        "id -u; id -G",
    ]
    done = subprocess.run(
        argv, capture_output=True, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
    )
    assert done.stdout.decode().split() == ["40002", "40002"], done.stderr


# -- the local executor, sandboxed ------------------------------------------------------

RUN_AS = 40777


class Sandboxed:
    """A LocalExecutor whose workers run as `RUN_AS` in bubblewrap, its home hidden."""

    def __init__(self, root: Path) -> None:
        policy = SandboxPolicy(mode="bwrap", hidden=(str(root),))
        self.executor = LocalExecutor(root / "runs", root / "ckpt", NODE, sandbox=policy)
        self.handles: list[str] = []

    def launch(
        self,
        script: str,
        *,
        job_id: str = "j-sb",
        uid: int = RUN_AS,
        memory: int = 0,
        grace_s: float = 10.0,
    ) -> str:
        worker = WorkerLaunch(index=0, node_id="n", cpu=0.5, memory=memory)
        gang = GangLaunch(
            job_id=job_id,
            attempt=1,
            command=("/bin/sh", "-c", script),
            env={"KAON_RUN_AS": str(uid)},
            workers=(worker,),
            stop_grace_s=grace_s,
        )
        (state,) = self.executor.launch(gang)
        self.handles.append(state.handle)
        return state.handle

    def wait(self, handle: str, timeout: float = 30.0) -> WorkerState:
        deadline = time.monotonic() + timeout
        while (state := self.executor.status([handle])[0]).alive:
            assert time.monotonic() < deadline, f"{handle} still running"
            time.sleep(0.05)
        return state

    def wait_for_log(self, handle: str, text: str) -> None:
        deadline = time.monotonic() + 30
        while text.encode() not in self.executor.logs(handle):
            assert time.monotonic() < deadline, f"{text!r} never in {self.log(handle)!r}"
            time.sleep(0.05)

    def log(self, handle: str) -> str:
        return self.executor.logs(handle).decode()


@pytest.fixture
def boxed(tmp_path: Path) -> Iterator[Sandboxed]:
    harness = Sandboxed(tmp_path)
    try:
        yield harness
    finally:
        harness.executor.stop(harness.handles, grace_s=0.0)
        for handle in harness.handles:
            harness.wait(handle)
        harness.executor.close()


def _processes_of(uid: int) -> list[str]:
    return [
        " ".join(p.info["cmdline"] or [])
        for p in psutil.process_iter(["uids", "cmdline"])
        if p.info["uids"] is not None and p.info["uids"].real == uid
    ]


@needs_bwrap
class TestSandboxedWorkerEnds:
    """Exit statuses, stops and the memory limit read as they do without a sandbox."""

    def test_exit_codes_and_a_signal_of_its_own(self, boxed: Sandboxed) -> None:
        ok, three = boxed.launch("id -u; exit 0"), boxed.launch("exit 3", job_id="j-3")
        killed = boxed.launch("kill -9 $$", job_id="j-9")
        assert (boxed.wait(ok).exit_code, boxed.log(ok)) == (0, f"{RUN_AS}\n")
        assert (boxed.wait(three).exit_code, boxed.wait(three).reason) == (3, None)
        done = boxed.wait(killed)
        assert (done.exit_code, done.reason) == (137, "killed by SIGKILL")

    def test_a_command_that_is_not_there_cannot_start(self, boxed: Sandboxed) -> None:
        worker = WorkerLaunch(index=0, node_id="n", cpu=0.5, memory=0)
        gang = GangLaunch("j-none", 1, ("/no/such/program",), {"KAON_RUN_AS": "40777"}, (worker,))
        (state,) = boxed.executor.launch(gang)
        boxed.handles.append(state.handle)
        done = boxed.wait(state.handle)
        assert done.exit_code == 127 and done.reason and "cannot start" in done.reason

    def test_sigterm_reaches_the_worker_and_it_has_its_grace(self, boxed: Sandboxed) -> None:
        script = "trap 'echo saving; exit 75' TERM; echo up; sleep 30 & wait"
        handle = boxed.launch(script, grace_s=30.0)
        boxed.wait_for_log(handle, "up")
        boxed.executor.stop([handle], grace_s=30.0)
        done = boxed.wait(handle)
        assert (done.exit_code, done.reason) == (75, None)
        assert "saving" in boxed.log(handle)

    def test_a_worker_killed_by_sigterm_reports_143(self, boxed: Sandboxed) -> None:
        handle = boxed.launch("echo up; exec sleep 60")
        boxed.wait_for_log(handle, "up")
        boxed.executor.stop([handle], grace_s=10.0)
        done = boxed.wait(handle)
        assert (done.exit_code, done.reason) == (143, "killed by SIGTERM")

    def test_a_stop_kills_everything_even_what_left_the_process_group(
        self, boxed: Sandboxed
    ) -> None:
        script = "setsid sleep 4242 & trap '' TERM; sleep 4243 & echo up; wait"
        handle = boxed.launch(script, uid=RUN_AS + 1)
        boxed.wait_for_log(handle, "up")
        assert any("sleep 4242" in c for c in _processes_of(RUN_AS + 1))
        boxed.executor.stop([handle], grace_s=0.3)
        done = boxed.wait(handle)
        assert (done.exit_code, done.reason) == (137, "killed by SIGKILL")
        deadline = time.monotonic() + 5
        while _processes_of(RUN_AS + 1):
            assert time.monotonic() < deadline, _processes_of(RUN_AS + 1)
            time.sleep(0.05)

    def test_memory_is_watched_inside_the_sandbox(self, boxed: Sandboxed) -> None:
        # tail keeps a line-less stream whole: 400 MiB held by a child of the shell
        handle = boxed.launch("head -c 400M /dev/zero | tail -n 1; echo done", memory=150 * MiB)
        done = boxed.wait(handle)
        assert done.exit_code == 137
        assert done.reason and "out of memory" in done.reason and "150 MiB" in done.reason
        assert "done" not in boxed.log(handle)


@needs_bwrap
def test_an_input_of_the_hidden_home_is_read_only_and_readable(tmp_path: Path) -> None:
    """As the server's own user (``KAON_SANDBOX=bwrap`` without uids): the input stays
    a link into the home's cache, bound read-only into the sandbox, and the rest of the
    home is hidden."""
    entry = tmp_path / "cache" / "artifacts" / "ab12"
    entry.mkdir(parents=True)
    (entry / "train.csv").write_text("1,2,3\n")
    (tmp_path / "server.key").write_text("the key")
    policy = SandboxPolicy(mode="bwrap", hidden=(str(tmp_path),))
    executor = LocalExecutor(tmp_path / "runs", tmp_path / "ckpt", NODE, sandbox=policy)
    script = (f"cat data/train.csv; cat {tmp_path}/server.key; echo x > data/new && echo WROTE;"
              f" echo w > $KAON_CHECKPOINT_DIR/w && echo ckpt-ok")  # fmt: skip
    worker = WorkerLaunch(index=0, node_id="n", cpu=0.5, memory=0)
    gang = GangLaunch("j-in", 1, ("/bin/sh", "-c", script), {}, (worker,),
                      inputs=(("data", str(entry)),))  # fmt: skip
    try:
        (state,) = executor.launch(gang)
        while (done := executor.status([state.handle])[0]).alive:
            time.sleep(0.05)
    finally:
        executor.close()
    log = executor.logs(state.handle).decode()
    assert done.exit_code == 0, log
    assert log.startswith("1,2,3\n") and "the key" not in log and "WROTE" not in log, log
    assert "No such file" in log and "Read-only file system" in log, log
    assert (tmp_path / "ckpt" / "j-in" / "w").read_text() == "w\n"
    assert sorted(p.name for p in entry.iterdir()) == ["train.csv"]


# -- a control plane whose workers run as users of their own, sandboxed ----------------


@pytest.fixture
def server(db_url: str) -> Iterator[RunningServer]:
    with uids_server(sandbox="bwrap", db_url=db_url) as running:
        yield running


OWN_WORK = """
id -u
echo secret-of-a > secret.txt
echo weights > "$KAON_CHECKPOINT_DIR/model.bin"
echo kept > "$KAON_OUTPUT_DIR/result.txt"
echo note > "$HOME/note" && echo note > "$TMPDIR/note" && echo folders-ok
echo from-a > /tmp/kaon-from-a && echo from-a > /dev/shm/kaon-from-a && echo tmp-ok
"""

# $1 the home, $2 the other job, $3 the control plane's pid, $4 a file in the host's /tmp,
# then names the home holds on the host.
PRYING = """
home=$1 other=$2 plane=$3 host_tmp=$4; shift 4
id -u
for name in "$@"; do [ -e "$home/$name" ] && echo "EXISTS $name"; done
for target in "$home/runs/$other/code/secret.txt" "$home/checkpoints/$other/model.bin" \\
    "$home/runs/$other/1/0/launch.json" "$home/runs/$other/1/0/log" "$home/runs/$other" \\
    /tmp/kaon-from-a /dev/shm/kaon-from-a "$host_tmp"; do
  [ -e "$target" ] && echo "EXISTS $target"
done
ls "$home" && echo "LISTED home"
for target in /x /usr/kaon-x /etc/kaon-x "$home/kaon-x"; do
  touch "$target" 2>/dev/null && echo "WROTE $target"
done
touch /tmp/mine /var/tmp/mine /dev/shm/mine "$HOME/mine" && echo own-ok
[ -e "/proc/$plane" ] && echo "SAW the control plane"
for p in /proc/[0-9]*; do echo "proc ${p#/proc/} $(cat "$p/comm")"; done
exit 0
"""


SECRET_AND_INPUT = 'sha256sum < "$KEY_FILE"; ls -A /dev/shm; cat data/train.csv'


def _run(client: Client, script: str, *args: str, **submit: object) -> tuple[JobView, str]:
    job = client.jobs.submit(["/bin/sh", "-c", script, "sh", *args], cpu=0.5, **submit)  # type: ignore[arg-type]
    done = client.jobs.wait(job.id, timeout=60)
    return done, client.jobs.logs(job.id)


@needs_bwrap
class TestPrivateView:
    def test_a_job_sees_its_own_and_nothing_of_the_plane_or_other_jobs(
        self, server: RunningServer
    ) -> None:
        home = server.settings.home
        host_tmp = Path("/tmp") / f"kaon-host-{secrets.token_hex(4)}"
        host_tmp.write_text("the host's")
        try:
            with server.client() as admin:
                admin.request("POST", "/api/v1/workspaces", json={"name": "team-b"})
                done_a, log_a = _run(admin, OWN_WORK)
                assert done_a.status is JobStatus.SUCCEEDED, log_a
                sleeper = admin.jobs.submit(["/bin/sh", "-c", "exec sleep 5417"], cpu=0.5)
                _wait_running(admin, sleeper.id)
                names = sorted(p.name for p in home.iterdir())
                passages = {"runs", "checkpoints"}  # on the way to B's own folders
                with server.client(workspace="team-b") as team_b:
                    shown = [n for n in names if n not in passages]
                    args = (str(home), done_a.id, str(os.getpid()), str(host_tmp), *shown)
                    done_b, log_b = _run(team_b, PRYING, *args)
                cancelled = admin.jobs.cancel(sleeper.id)
                cancelled = admin.jobs.wait(sleeper.id, timeout=30)
        finally:
            host_tmp.unlink()

        uid_a, uid_b = int(log_a.split()[0]), int(log_b.split()[0])
        assert UIDS[0] <= uid_a <= UIDS[1] and UIDS[0] <= uid_b <= UIDS[1] and uid_a != uid_b
        # A's own work landed on the host, as A's
        assert "folders-ok" in log_a and "tmp-ok" in log_a, log_a
        code = home / "runs" / done_a.id / "code"
        assert (code / "secret.txt").stat().st_uid == uid_a
        assert (home / "checkpoints" / done_a.id / "model.bin").read_text() == "weights\n"
        assert (home / "runs" / done_a.id / "outputs" / "result.txt").read_text() == "kept\n"
        # ... and its /tmp and /dev/shm were its own
        assert not Path("/tmp/kaon-from-a").exists() and not Path("/dev/shm/kaon-from-a").exists()

        assert done_b.status is JobStatus.SUCCEEDED, log_b
        assert {"server.key", "runs", "checkpoints"} <= set(names)  # there, on the host
        assert "EXISTS" not in log_b and "LISTED" not in log_b, log_b
        assert "WROTE" not in log_b and "own-ok" in log_b, log_b
        assert "SAW" not in log_b, log_b
        procs = [line.split(maxsplit=2) for line in log_b.splitlines() if line.startswith("proc ")]
        assert procs and max(int(p[1]) for p in procs) < 50, procs  # a pid namespace of its own
        assert {p[2] for p in procs} <= {"bwrap", "sh", "cat"}, procs  # no sleeper, no plane

        assert cancelled.status is JobStatus.CANCELLED
        assert not any("sleep 5417" in c for c in _processes_of(uid_a))

    def test_secret_file_input_and_endings_work_as_before(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        data = tmp_path / "data"
        data.mkdir()
        (data / "train.csv").write_text("1,2,3\n")
        value = secrets.token_hex(16)
        with server.client() as client:
            client.secrets.set("api-key", value)
            client.artifacts.push("digits", data)
            spec = {
                "command": ["/bin/sh", "-c", SECRET_AND_INPUT],
                "env": {"KEY_FILE": secret("api-key", file=True)},
                "inputs": [{"artifact": "digits:1", "path": "data"}],
                "resources": {"cpu": 0.5},
            }
            job = client.jobs.submit(spec=spec)
            done = client.jobs.wait(job.id, timeout=60)
            log = client.jobs.logs(job.id)
            three, _ = _run(client, "exit 3")
            killed, _ = _run(client, "kill -9 $$")
        assert done.status is JobStatus.SUCCEEDED, log
        lines = log.split()
        digest = hashlib.sha256(value.encode()).hexdigest()  # the log masks the value itself
        assert lines[:2] == [digest, "-"] and lines[2].startswith("kaon-secrets-"), log
        assert lines[3:] == ["1,2,3"], log  # /dev/shm holds the secrets' folder alone
        assert three.status is JobStatus.FAILED
        assert [(w.exit_code, w.reason) for w in three.workers] == [(3, None)]
        assert killed.status is JobStatus.FAILED
        assert [(w.exit_code, w.reason) for w in killed.workers] == [(137, "killed by SIGKILL")]


def _wait_running(client: Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while client.jobs.get(job_id).status is not JobStatus.RUNNING:
        assert time.monotonic() < deadline, f"{job_id} never ran"
        time.sleep(0.1)


def test_the_control_planes_files_outside_its_home_are_hidden_too(tmp_path: Path) -> None:
    """A SQLite database (and its WAL) and a TLS key kept outside the home are on the
    sandbox's hidden list, with the home itself."""
    from kaon.server.app import _sandbox
    from tests.conftest import test_settings

    db = tmp_path / "elsewhere" / "kaon.db"
    key = tmp_path / "tls" / "key.pem"
    settings = test_settings(tmp_path / "home", f"sqlite+aiosqlite:///{db}", tls_key=key)
    hidden = _sandbox(settings).hidden
    assert str(settings.home) in hidden
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), key):
        assert str(path.resolve()) in hidden
    on_postgres = test_settings(tmp_path / "home", "postgresql+asyncpg://u@h/db")
    assert not any(p.endswith(".db") for p in _sandbox(on_postgres).hidden)
