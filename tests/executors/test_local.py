"""The local executor with real processes: what a worker sees, how it is stopped, and what
is left to read afterwards. No server and no database: the executor on its own."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.core.errors import PermanentBackendError
from kaon.core.nodes import GpuInfo
from kaon.executors.base import GangLaunch, NodeInventory, WorkerLaunch, WorkerState
from kaon.executors.local import LocalExecutor

PY = sys.executable
MiB = 2**20
NODE = NodeInventory(
    id="node-a",
    name="node-a",
    address="127.0.0.1",
    cpu=8.0,
    memory=16 * 2**30,
    gpus=tuple(GpuInfo(index=i, model="H100", memory=80 * 2**30) for i in range(4)),
)


class Harness:
    """A LocalExecutor in a tmp folder that stops whatever a test leaves running."""

    def __init__(self, root: Path) -> None:
        self.executor = LocalExecutor(root / "runs", root / "checkpoints", NODE)
        self.handles: list[str] = []

    def launch(self, gang: GangLaunch) -> list[WorkerState]:
        states = self.executor.launch(gang)
        self.handles.extend(s.handle for s in states)
        return states

    def wait(self, handle: str, timeout: float = 20.0) -> WorkerState:
        deadline = time.monotonic() + timeout
        while True:
            (state,) = self.executor.status([handle])
            if not state.alive:
                return state
            assert time.monotonic() < deadline, f"{handle} still running after {timeout} s"
            time.sleep(0.05)

    def wait_for_log(self, handle: str, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.executor.logs(handle):
            assert time.monotonic() < deadline, f"{text!r} never appeared in {handle}'s log"
            time.sleep(0.05)

    def log(self, handle: str) -> str:
        return self.executor.logs(handle).decode()

    def cleanup(self) -> None:
        self.executor.stop(self.handles, grace_s=0.0)
        for handle in self.handles:
            self.wait(handle)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


def gang(
    code: str,
    *,
    job_id: str = "j-test",
    workers: tuple[WorkerLaunch, ...] | None = None,
    env: dict[str, str] | None = None,
    memory: int = 512 * MiB,
    snapshot: str | None = None,
    grace_s: float = 10.0,
) -> GangLaunch:
    if workers is None:
        workers = (WorkerLaunch(index=0, node_id=NODE.id, cpu=0.5, memory=memory),)
    return GangLaunch(
        job_id=job_id,
        attempt=1,
        command=(PY, "-c", code),
        env=env or {},
        workers=workers,
        snapshot=snapshot,
        stop_grace_s=grace_s,
    )


ENV_NAMES = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
    "MASTER_PORT", "KAON_WORKER_INDEX", "KAON_CHECKPOINT_DIR", "CUDA_VISIBLE_DEVICES",
    "KAON_JOB_ID", "LR", "KAON_DATABASE_URL", "KAON_BOOTSTRAP_TOKEN", "KAON_TEST_DATABASE_URL",
    "KAON_HOME", "PYTHONUNBUFFERED",
)  # fmt: skip
PRINT_ENV = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {ENV_NAMES!r}}}))"


class TestWorkerEnvironment:
    def test_each_worker_gets_its_place_in_the_gang(
        self, local: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Server-side secrets in the server's environment must not reach user code.
        monkeypatch.setenv("KAON_DATABASE_URL", "postgresql://kaon:secret@db/kaon")
        monkeypatch.setenv("KAON_BOOTSTRAP_TOKEN", "kaon_bootstrap-secret")
        monkeypatch.setenv("KAON_TEST_DATABASE_URL", "postgresql://root@db/test")
        monkeypatch.setenv("KAON_HOME", "/srv/kaon")
        workers = (
            WorkerLaunch(index=0, node_id=NODE.id, cpu=0.5, memory=512 * MiB, gpus=(1, 3)),
            WorkerLaunch(index=1, node_id=NODE.id, cpu=0.5, memory=512 * MiB, gpus=(0,)),
        )
        job_env = {"KAON_JOB_ID": "j-test", "LR": "3e-4"}
        states = local.launch(gang(PRINT_ENV, workers=workers, env=job_env))
        assert [s.handle for s in states] == ["j-test/1/0", "j-test/1/1"]
        seen = []
        for state in states:
            assert local.wait(state.handle).exit_code == 0
            seen.append(json.loads(local.log(state.handle)))
        first, second = seen
        checkpoint = str(local.executor.checkpoint_dir("j-test"))
        for rank, env in enumerate(seen):
            assert env["WORLD_SIZE"] == "2"
            assert env["RANK"] == env["KAON_WORKER_INDEX"] == env["LOCAL_RANK"] == str(rank)
            assert env["LOCAL_WORLD_SIZE"] == "2"
            assert env["NODE_RANK"] == "0"
            assert env["MASTER_ADDR"] == "127.0.0.1"
            assert env["KAON_CHECKPOINT_DIR"] == checkpoint
            assert env["KAON_JOB_ID"] == "j-test" and env["LR"] == "3e-4"
            assert env["PYTHONUNBUFFERED"] == "1"
            for secret in ("KAON_DATABASE_URL", "KAON_BOOTSTRAP_TOKEN", "KAON_TEST_DATABASE_URL",
                           "KAON_HOME"):  # fmt: skip
                assert env[secret] is None, f"{secret} leaked into the worker"
        assert first["MASTER_PORT"] == second["MASTER_PORT"]
        assert 0 < int(first["MASTER_PORT"]) < 65536
        assert first["CUDA_VISIBLE_DEVICES"] == "1,3"
        assert second["CUDA_VISIBLE_DEVICES"] == "0"
        assert Path(checkpoint).is_dir()

    def test_a_worker_without_gpus_sees_none(self, local: Harness) -> None:
        (state,) = local.launch(gang(PRINT_ENV))
        assert local.wait(state.handle).exit_code == 0
        env = json.loads(local.log(state.handle))
        assert env["CUDA_VISIBLE_DEVICES"] == ""  # empty hides every GPU; unset shows all
        assert env["WORLD_SIZE"] == "1" and env["RANK"] == "0"

    def test_a_relaunch_keeps_the_master_port(self, local: Harness) -> None:
        code = "import os; print(os.environ['MASTER_PORT'])"
        one = gang(code, workers=(WorkerLaunch(0, NODE.id, 0.5, 512 * MiB),))
        (first,) = local.launch(one)
        two = gang(code, workers=(WorkerLaunch(0, NODE.id, 0.5, 512 * MiB),
                                  WorkerLaunch(1, NODE.id, 0.5, 512 * MiB)))  # fmt: skip
        states = local.launch(two)  # worker 0 adopted, worker 1 started now
        for state in states:
            assert local.wait(state.handle).exit_code == 0
        ports = {local.log(state.handle) for state in states}
        assert len(ports) == 1, ports
        assert states[0].handle == first.handle


class TestLaunch:
    def test_launching_twice_runs_the_worker_once(self, local: Harness, tmp_path: Path) -> None:
        out = tmp_path / "out.txt"
        code = f"import time; open({str(out)!r}, 'a').write('ran\\n'); time.sleep(0.5)"
        (first,) = local.launch(gang(code))
        (again,) = local.launch(gang(code))
        assert again.handle == first.handle
        assert again.pid == first.pid
        assert local.wait(first.handle).exit_code == 0
        (after_exit,) = local.launch(gang(code))
        assert after_exit.pid == first.pid
        assert not after_exit.alive and after_exit.exit_code == 0
        assert out.read_text() == "ran\n"

    def test_exit_code_is_reported(self, local: Harness) -> None:
        (state,) = local.launch(gang("import sys; print('bye'); sys.exit(3)"))
        done = local.wait(state.handle)
        assert (done.exit_code, done.reason) == (3, None)
        assert local.log(state.handle) == "bye\n"

    def test_a_missing_program_is_exit_127_with_a_reason(self, local: Harness) -> None:
        missing = GangLaunch("j-missing", 1, ("/no/such/program",), {},
                             (WorkerLaunch(0, NODE.id, 0.5, 512 * MiB),))  # fmt: skip
        (state,) = local.launch(missing)
        done = local.wait(state.handle)
        assert done.exit_code == 127
        assert done.reason and "cannot start" in done.reason
        assert "/no/such/program" in local.log(state.handle)

    def test_a_worker_for_another_node_is_refused(self, local: Harness) -> None:
        elsewhere = (WorkerLaunch(index=0, node_id="node-b", cpu=0.5, memory=512 * MiB),)
        with pytest.raises(PermanentBackendError, match="node-b"):
            local.launch(gang("pass", workers=elsewhere))

    def test_inventory_is_the_node(self, local: Harness) -> None:
        assert local.executor.inventory() == [NODE]


class TestMemoryLimit:
    def test_a_worker_over_its_memory_is_stopped_with_a_reason(self, local: Harness) -> None:
        code = ("import time; b = bytearray(400 * 2**20); print('allocated', flush=True); "
                "time.sleep(30)")  # fmt: skip
        (state,) = local.launch(gang(code, memory=150 * MiB))
        done = local.wait(state.handle, timeout=30)
        assert done.exit_code == 137
        assert done.reason is not None
        assert "out of memory" in done.reason
        assert "150 MiB" in done.reason
        assert "out of memory" in local.log(state.handle)

    def test_a_worker_within_its_memory_runs_on(self, local: Harness) -> None:
        code = "b = bytearray(50 * 2**20); print('fine')"
        (state,) = local.launch(gang(code, memory=300 * MiB))
        done = local.wait(state.handle)
        assert (done.exit_code, done.reason) == (0, None)
        assert local.log(state.handle) == "fine\n"


class TestStop:
    def test_sigterm_stops_a_well_behaved_worker(self, local: Harness) -> None:
        code = ("import signal, sys, time\n"
                "def save(*_): print('saving', flush=True); sys.exit(75)\n"
                "signal.signal(signal.SIGTERM, save)\n"
                "print('up', flush=True)\ntime.sleep(30)")  # fmt: skip
        (state,) = local.launch(gang(code))
        local.wait_for_log(state.handle, "up")
        local.executor.stop([state.handle], grace_s=10.0)
        done = local.wait(state.handle, timeout=10)
        assert done.exit_code == 75
        assert "saving" in local.log(state.handle)

    def test_a_worker_that_ignores_sigterm_is_killed_after_grace(self, local: Harness) -> None:
        code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")  # fmt: skip
        (state,) = local.launch(gang(code, grace_s=60.0))  # stop's grace wins over the gang's
        local.wait_for_log(state.handle, "up")
        started = time.monotonic()
        local.executor.stop([state.handle], grace_s=0.5)
        assert time.monotonic() - started < 0.5, "stop must not wait for the worker"
        assert local.executor.status([state.handle])[0].alive  # still in its grace period
        done = local.wait(state.handle, timeout=10)
        assert time.monotonic() - started >= 0.5
        assert done.exit_code == 137
        assert done.reason == "killed by SIGKILL"

    def test_a_worker_killed_by_sigterm_reports_143(self, local: Harness) -> None:
        (state,) = local.launch(gang("import time; print('up', flush=True); time.sleep(60)"))
        local.wait_for_log(state.handle, "up")
        local.executor.stop([state.handle], grace_s=5.0)
        done = local.wait(state.handle, timeout=10)
        assert (done.exit_code, done.reason) == (143, "killed by SIGTERM")

    def test_stopping_a_finished_worker_does_nothing(self, local: Harness) -> None:
        (state,) = local.launch(gang("pass"))
        before = local.wait(state.handle)
        local.executor.stop([state.handle], grace_s=0.0)
        assert local.executor.status([state.handle]) == [before]


class TestLogs:
    def test_logs_from_an_offset(self, local: Harness) -> None:
        code = "import sys; print('hello'); print('world', file=sys.stderr)"
        (state,) = local.launch(gang(code))
        local.wait(state.handle)
        logs = local.executor.logs
        assert logs(state.handle) == b"hello\nworld\n"  # stderr goes to the same log
        assert logs(state.handle, 6) == b"world\n"
        assert logs(state.handle, 0, limit=5) == b"hello"
        assert logs(state.handle, 100) == b""

    def test_logs_of_a_worker_never_launched_are_empty(self, local: Harness) -> None:
        assert local.executor.logs("j-none/1/0") == b""

    @pytest.mark.parametrize("handle", ["../../etc/1", "j/1", "j/../0", "a/b/c/d"])
    def test_a_handle_cannot_leave_the_runs_folder(self, local: Harness, handle: str) -> None:
        with pytest.raises(PermanentBackendError):
            local.executor.logs(handle)


def _tar_gz(path: Path, files: dict[str, str]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


class TestSnapshot:
    def test_the_snapshot_is_the_working_directory(self, local: Harness, tmp_path: Path) -> None:
        archive = _tar_gz(tmp_path / "code.tar.gz",
                          {"data.txt": "payload-42", "pkg/mod.py": "VALUE = 7\n"})  # fmt: skip
        code = ("import os, sys; sys.path.insert(0, os.getcwd()); from pkg.mod import VALUE; "
                "print(open('data.txt').read(), VALUE, os.getcwd())")  # fmt: skip
        (state,) = local.launch(gang(code, snapshot=archive))
        assert local.wait(state.handle).exit_code == 0, local.log(state.handle)
        text, value, cwd = local.log(state.handle).split()
        assert (text, value) == ("payload-42", "7")
        assert cwd == str(local.executor.runs_dir / "j-test" / "code")

    def test_without_a_snapshot_the_cwd_is_an_empty_folder(self, local: Harness) -> None:
        (state,) = local.launch(gang("import os; print(os.listdir('.'))"))
        local.wait(state.handle)
        assert local.log(state.handle) == "[]\n"

    def test_a_broken_snapshot_is_a_permanent_error(self, local: Harness, tmp_path: Path) -> None:
        broken = tmp_path / "broken.tar.gz"
        broken.write_bytes(b"not a tar file")
        with pytest.raises(PermanentBackendError, match="cannot unpack"):
            local.launch(gang("pass", snapshot=str(broken)))
        job_dir = local.executor.runs_dir / "j-test"
        assert not [p.name for p in job_dir.glob("code*")]  # nothing half-unpacked left

    def test_a_snapshot_cannot_write_outside_its_folder(
        self, local: Harness, tmp_path: Path
    ) -> None:
        archive = _tar_gz(tmp_path / "evil.tar.gz", {"../../escaped.txt": "x"})
        with pytest.raises(PermanentBackendError):
            local.launch(gang("pass", snapshot=archive))
        assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))
        assert not (local.executor.runs_dir / "j-test" / "code").exists()
