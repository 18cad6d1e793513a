"""The local executor: workers are child processes on this machine.

Each worker gets a folder ``runs/JOB/ATTEMPT/INDEX`` holding its launch spec, its
supervisor's pid, its log and, once it ended, its exit status. That folder is the
executor's whole memory, which is what makes it crash-only: after the server restarts,
`status` reads the same files and `launch` adopts what already runs.

Nothing of the control plane's is handed to a worker: it gets a HOME and a temporary
folder of its own in its run folder (never the server's ``~/.kaon`` or ``/tmp``), and
the launch spec on disk holds no token. The job's token goes to the supervisor in a
separate 0600 file (`HANDED_FILE`) that the supervisor deletes as it reads it, so it
lives on only in the worker's own environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from kaon.core.errors import PermanentBackendError
from kaon.core.nodes import GpuInfo
from kaon.core.replicas import ENV_REPLICA_KEY
from kaon.executors.base import GangLaunch, NodeInventory, WorkerLaunch, WorkerState
from kaon.executors.env import worker_env
from kaon.executors.sandbox import (
    SandboxPolicy,
    Tools,
    WorkerView,
    devices,
    sandbox_spec,
    tools_for,
)
from kaon.executors.spawner import SpawnerClient

SHIM = Path(__file__).with_name("_shim.py")
HANDED_FILE = "handed.json"  # kaon.executors._shim reads and deletes it
HANDED_ENV = ("KAON_JOB_TOKEN", ENV_REPLICA_KEY)  # credentials kept out of launch.json
RUN_AS_ENV = "KAON_RUN_AS"  # "UID": run the workers as this user and group (root only)
TRAVERSE = 0o711  # a folder other users may pass through to their own, never list
_SERVER_DIRS = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
                "XDG_RUNTIME_DIR", "TMP", "TEMP")  # fmt: skip
LOST_AFTER_S = 30.0  # a launch claimed but never started is declared lost after this
DETACH_WAIT_S = 10.0  # for a detached supervisor to write its pid
OUTPUTS = "outputs"  # runs/JOB/outputs: KAON_OUTPUT_DIR, kept as an artifact on success


def local_nodes(
    name: str,
    count: int,
    gpus: list[GpuInfo],
    cpus: float | None = None,
    memory: int | None = None,
    labels: dict[str, str] | None = None,
) -> list[NodeInventory]:
    """This machine as one node, or as `count` nodes that split its CPUs and memory
    (``KAON_LOCAL_NODES``; declared capacity, `cpus` and `memory`, is then per node).
    Labelled ``kaon.io/pool: local``, as a Ray pool's nodes are with their pool's name,
    so work can be pinned to either.
    Every node gets every GPU index, as declared GPUs are a test's fiction anyway."""
    host = socket.gethostname() if name == "local" else name
    cpu = cpus or float(os.cpu_count() or 1) / count
    mem = memory or int(psutil.virtual_memory().total) // count
    return [
        NodeInventory(
            id=name if count == 1 else f"{name}-{i}",
            name=host if count == 1 else f"{host}-{i}",
            address="127.0.0.1",
            cpu=cpu,
            memory=mem,
            gpus=tuple(gpus),
            labels={"kaon.io/pool": "local", **(labels or {})},
        )
        for i in range(count)
    ]


class LaunchAborts:
    """Launches asked to stop while they run (a cancelled or preempted job whose gang is
    still being started): the executor starts no further worker of that attempt. Shared
    by the executor and whoever watches the job (the launch step), thread-safe."""

    def __init__(self) -> None:
        self._asked: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def ask(self, job_id: str, attempt: int) -> None:
        with self._lock:
            self._asked.add((job_id, attempt))

    def asked(self, job_id: str, attempt: int) -> bool:
        with self._lock:
            return (job_id, attempt) in self._asked

    def forget(self, job_id: str, attempt: int) -> None:
        with self._lock:
            self._asked.discard((job_id, attempt))


class LocalExecutor:
    """Runs gangs as supervised child processes on one node (this machine)."""

    name = "local"

    def __init__(
        self,
        runs_dir: Path,
        checkpoints_dir: Path,
        node: NodeInventory | list[NodeInventory],
        *,
        detach: bool = False,
        watch_pid: int | None = None,
        host_env: Callable[[], dict[str, str]] | None = None,
        aborts: LaunchAborts | None = None,
        sandbox: SandboxPolicy | None = None,
    ) -> None:
        """One node, or several that share this machine (a pool to test gangs that span
        nodes and placement across them, as Ray's ``cluster_utils.Cluster`` does).

        `detach`: supervisors leave this process's tree (a double fork), so they outlive
        it even when whoever stops it kills its children too (a Ray actor's fate).
        `watch_pid`: supervisors stop their worker when that process is gone (the Ray
        node's raylet: a worker must not outlive its node's membership of the cluster,
        or it could run twice once its job is placed elsewhere).
        `sandbox`: when workers get a private view of the file system (bubblewrap); by
        default ``KAON_SANDBOX`` with the runs folder's parent (the home) hidden, except
        on a Ray node (`watch_pid`), whose workers run without one for now.
        """
        self.runs_dir = runs_dir
        self.checkpoints_dir = checkpoints_dir
        self.nodes = list(node) if isinstance(node, list) else [node]
        self.node = self.nodes[0]
        self.detach = detach
        self.watch_pid = watch_pid
        self.host_env = host_env or _host_env
        self.aborts = aborts or LaunchAborts()
        self.sandbox = sandbox or _default_sandbox(runs_dir, watch_pid)
        self._spawner: SpawnerClient | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._listener: Callable[[], None] | None = None
        runs_dir.mkdir(parents=True, exist_ok=True)

    def set_listener(self, callback: Callable[[], None]) -> None:
        self._listener = callback

    def close(self) -> None:
        if self._spawner is not None:
            self._spawner.close()  # workers are supervised by their own processes

    def inventory(self) -> list[NodeInventory]:
        return list(self.nodes)

    # -- launch -------------------------------------------------------------------------

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.checkpoints_dir / job_id

    def output_dir(self, job_id: str) -> Path:
        """The job's KAON_OUTPUT_DIR, one for all its workers and attempts."""
        return self.runs_dir / job_id / OUTPUTS

    def launch(self, gang: GangLaunch) -> list[WorkerState]:
        for w in gang.workers:
            if w.node_id not in {n.id for n in self.nodes}:
                raise PermanentBackendError(f"node {w.node_id!r} is not this executor's")
        return self.launch_on(gang, {n.id for n in self.nodes})

    def launch_on(self, gang: GangLaunch, node_ids: set[str]) -> list[WorkerState]:
        """Start (or adopt) the gang's workers that are placed on `node_ids`; the rest of
        the gang runs elsewhere, but shapes every worker's layout (ranks, world size)."""
        attempt_dir = self.runs_dir / gang.job_id / str(gang.attempt)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        cwd = self._working_dir(gang)
        self.output_dir(gang.job_id).mkdir(exist_ok=True)
        uid = run_as(gang)
        tools = tools_for(self.sandbox.mode, uid)  # refused before any worker is begun
        if uid is not None:
            self._open_to(uid, gang.job_id, attempt_dir, cwd)
        master = gang.master or (self.node.address, self.gang_port(gang.job_id, gang.attempt))
        mine = [w for w in gang.workers if w.node_id in node_ids]
        return [
            self._launch_worker(gang, worker, attempt_dir, cwd, master, tools)
            if not self.aborts.asked(gang.job_id, gang.attempt)
            else _not_started(gang, worker)
            for worker in sorted(mine, key=lambda w: w.index)
        ]

    def _working_dir(self, gang: GangLaunch) -> Path:
        """The job's code: its snapshot unpacked once per job, or an empty folder."""
        code = self.runs_dir / gang.job_id / "code"
        if code.exists():
            return code
        tmp = code.with_name(f"code.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if gang.snapshot:
            try:
                with tarfile.open(gang.snapshot, "r:gz") as tar:
                    tar.extractall(tmp, filter="data")
            except (OSError, tarfile.TarError) as e:
                shutil.rmtree(tmp, ignore_errors=True)  # leave no half-unpacked folder
                raise PermanentBackendError(
                    f"cannot unpack the job's working directory: {e}"
                ) from e
        try:
            link_inputs(tmp, gang.inputs, copy=run_as(gang) is not None)
        except PermanentBackendError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(code)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another launch won the race
        return code

    def _open_to(self, uid: int, job_id: str, attempt_dir: Path, code: Path) -> None:
        """Let the workers' user reach what is theirs and nothing else: the folders on
        the way pass it through (0711: no listing), and the job's code and checkpoint
        folder become its own (0700). Everything else under the home stays root's 0600."""
        for folder in (self.runs_dir, self.runs_dir / job_id, attempt_dir, self.checkpoints_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, TRAVERSE)
        ckpt = self.checkpoint_dir(job_id)
        ckpt.mkdir(parents=True, exist_ok=True)
        for folder in (code, ckpt, self.output_dir(job_id)):
            _give(folder, uid)

    def gang_port(self, job_id: str, attempt: int) -> int:
        """MASTER_PORT, chosen once per attempt on this node and remembered for
        re-launches (a repeated launch must hand out the same rendezvous)."""
        attempt_dir = self.runs_dir / job_id / str(attempt)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        path = attempt_dir / "gang.json"
        if path.exists():
            return int(json.loads(path.read_text())["master_port"])
        port = self._free_port()
        _write_json(path, {"master_port": port})
        return port

    def _free_port(self) -> int:
        with socket.socket() as s:
            s.bind((self.node.address, 0))
            return int(s.getsockname()[1])

    def _launch_worker(
        self,
        gang: GangLaunch,
        worker: WorkerLaunch,
        attempt_dir: Path,
        cwd: Path,
        master: tuple[str, int],
        tools: Tools | None = None,
    ) -> WorkerState:
        wdir = attempt_dir / str(worker.index)
        handle = f"{gang.job_id}/{gang.attempt}/{worker.index}"
        try:
            wdir.mkdir()
        except FileExistsError:
            return self._state(handle)  # launched before (maybe by an earlier server)
        ckpt = self.checkpoint_dir(gang.job_id)
        ckpt.mkdir(parents=True, exist_ok=True)
        own_port = self._free_port()
        uid = run_as(gang)
        if uid is not None:
            os.chmod(wdir, TRAVERSE)
        env = worker_env(
            gang,
            worker,
            master[0],
            master[1],
            private_dirs(self.host_env(), wdir, uid),
            node_address=self.node.address,
            port=own_port,
            checkpoint_dir=str(ckpt),
            output_dir=str(self.output_dir(gang.job_id)),
        )
        handed = {name: env.pop(name) for name in HANDED_ENV if name in env}
        env.pop(RUN_AS_ENV, None)
        if handed:
            _write_private_json(wdir / HANDED_FILE, handed)
        spec = {
            "command": list(gang.command),
            "cwd": str(cwd),
            "env": env,
            "memory": worker.memory,
            "grace_s": gang.stop_grace_s,
            "port": own_port,
            "watch_pid": self.watch_pid,
            "uid": uid,  # None: as this process's user
        }
        if tools is not None:  # a private view of the file system (kaon.executors.sandbox)
            spec["sandbox"] = sandbox_spec(tools, self._view(gang, wdir, cwd, uid), uid)
        _write_json(wdir / "launch.json", spec)
        try:
            pid = self._spawn(wdir)
        except OSError:  # no spawner: start the supervisor as its own Python
            pid = None
        if pid is not None:
            info = {"pid": pid, "create_time": _create_time(pid), "port": own_port}
            _write_json(wdir / "pid.json", info)
            return WorkerState(handle=handle, alive=True, pid=pid, port=own_port)
        if self.detach:
            return self._launch_detached(handle, wdir, own_port)
        proc = subprocess.Popen(
            [sys.executable, str(SHIM), str(wdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(wdir / "supervisor.log", "ab"),
            start_new_session=True,
            close_fds=True,
        )
        info = {"pid": proc.pid, "create_time": _create_time(proc.pid), "port": own_port}
        _write_json(wdir / "pid.json", info)
        with self._lock:
            self._children[handle] = proc
        threading.Thread(target=self._reap, args=(handle, proc), daemon=True).start()
        return WorkerState(handle=handle, alive=True, pid=proc.pid, port=own_port)

    def _view(self, gang: GangLaunch, wdir: Path, cwd: Path, uid: int | None) -> WorkerView:
        """What the worker sees besides the read-only root: its own folders (HOME and
        TMPDIR, not the rest of its run folder: the launch file and log are the
        supervisor's), its inputs (the cache entries its code links to; a worker of a
        workspace's uid has copies in its code instead), nothing of the control plane's."""
        inputs = () if uid is not None else gang.inputs
        hidden = [Path(p).resolve() for p in self.sandbox.hidden if os.path.lexists(p)]
        own = (
            *(wdir / name for name in PRIVATE_DIRS),
            cwd,
            self.checkpoint_dir(gang.job_id),
            self.output_dir(gang.job_id),
        )
        return WorkerView(
            cwd=str(cwd.resolve()),
            writable=tuple(str(p.resolve()) for p in own),
            readable=tuple(str(Path(source).resolve()) for _, source in inputs),
            hidden_dirs=tuple(str(p) for p in hidden if p.is_dir()),
            hidden_files=tuple(str(p) for p in hidden if not p.is_dir()),
            devices=devices(),
        )

    def _spawn(self, wdir: Path) -> int:
        """A supervisor forked by this run folder's spawner (see `kaon.executors.spawner`):
        a millisecond instead of a Python start."""
        if self._spawner is None:
            self._spawner = SpawnerClient(self.runs_dir, on_ended=self._ended)
        return self._spawner.spawn(wdir)

    def _ended(self, pid: int) -> None:
        if self._listener is not None:
            self._listener()

    def _launch_detached(self, handle: str, wdir: Path, port: int) -> WorkerState:
        """Start the supervisor as an orphan: a shell starts it in the background, prints
        its pid and exits, so it is nobody's child (a Ray actor's children die with it).
        The shell costs a millisecond where a Python parent would cost tens."""
        script = 'exec 0</dev/null; "$0" "$1" "$2" >/dev/null 2>>"$3" & echo $!'
        argv = ["/bin/sh", "-c", script, sys.executable, str(SHIM), str(wdir)]
        done = subprocess.run(
            [*argv, str(wdir / "supervisor.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            timeout=DETACH_WAIT_S,
        )
        try:
            pid = int(done.stdout.decode().strip())
        except ValueError:
            raise PermanentBackendError(
                f"the worker's supervisor did not start (see {wdir / 'supervisor.log'})"
            ) from None
        info = {"pid": pid, "create_time": _create_time(pid), "port": port}
        _write_json(wdir / "pid.json", info)
        return WorkerState(handle=handle, alive=True, pid=pid, port=port)

    def _reap(self, handle: str, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        with self._lock:
            self._children.pop(handle, None)
        if self._listener is not None:
            self._listener()

    # -- observe ------------------------------------------------------------------------

    def status(self, handles: list[str]) -> list[WorkerState]:
        return [self._state(h) for h in handles]

    def _dir(self, handle: str) -> Path:
        parts = handle.split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
            raise PermanentBackendError(f"not a local worker handle: {handle!r}")
        return self.runs_dir.joinpath(*parts)

    def _state(self, handle: str) -> WorkerState:
        wdir = self._dir(handle)
        exit_file = wdir / "exit.json"
        pid_info = read_json(wdir / "pid.json")
        pid = int(pid_info["pid"]) if pid_info else None
        port = int(pid_info["port"]) if pid_info and pid_info.get("port") else None
        if exit_file.exists():
            done = read_json(exit_file) or {}
            code = done.get("exit_code")
            return WorkerState(
                handle,
                False,
                pid,
                code if code is None else int(code),
                done.get("reason"),
                lost=bool(done.get("lost")),
            )
        if pid_info is None:
            if not wdir.exists() or time.time() - wdir.stat().st_mtime > LOST_AFTER_S:
                return WorkerState(handle, False, None, None, "lost: the worker never started")
            return WorkerState(handle, True, None)
        if _alive(pid_info):
            return WorkerState(handle, True, pid, port=port)
        if exit_file.exists():  # it finished between the two checks
            return self._state(handle)
        return WorkerState(handle, False, pid, None, "lost: the worker's supervisor died")

    def logs(self, handle: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        path = self._dir(handle) / "log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, offset))
                return f.read(limit)
        except FileNotFoundError:
            return b""

    # -- stop ---------------------------------------------------------------------------

    def stop(self, handles: list[str], grace_s: float) -> None:
        for handle in handles:
            wdir = self._dir(handle)
            pid_info = read_json(wdir / "pid.json")
            if pid_info is None or (wdir / "exit.json").exists() or not _alive(pid_info):
                continue
            if not (wdir / "stop.json").exists():
                _write_json(wdir / "stop.json", {"grace_s": grace_s, "at": time.time()})
            try:
                os.kill(int(pid_info["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass


def _host_env() -> dict[str, str]:
    """The server's environment, with the Python that runs Kaon first on PATH, so a job's
    ``python`` has the same packages (kaon, torch) as the installation that runs it."""
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        [bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]]
    )
    return env


def _default_sandbox(runs_dir: Path, watch_pid: int | None) -> SandboxPolicy:
    """``KAON_SANDBOX`` with the home hidden; off on a Ray node (see `LocalExecutor`)."""
    if watch_pid is not None:
        return SandboxPolicy(mode="off")
    return SandboxPolicy.from_env(os.environ, str(runs_dir.parent))


def _not_started(gang: GangLaunch, worker: WorkerLaunch) -> WorkerState:
    """A worker left unstarted because its launch was aborted: it has a handle (so the
    job's stop finds every worker) and nothing runs behind it."""
    handle = f"{gang.job_id}/{gang.attempt}/{worker.index}"
    return WorkerState(handle, False, reason="not started: the job was stopped first")


def run_as(gang: GangLaunch) -> int | None:
    """The uid (and gid) the control plane asked this gang's workers to run as, if any.
    Only a root executor can switch users; anyone else refuses rather than run the
    workers as itself when told to run them as someone else."""
    value = gang.env.get(RUN_AS_ENV)
    if not value:
        return None
    if os.geteuid() != 0:
        raise PermanentBackendError(
            "this node cannot run workers as another user: it does not run as root"
        )
    return int(value)


def link_inputs(workdir: Path, inputs: tuple[tuple[str, str], ...], copy: bool = False) -> None:
    """Make each input appear at its path in `workdir`: a link to the node's read-only,
    verified copy, or (`copy`, workers run as other users, who cannot enter the home's
    cache) a read-only copy of it. A path the code already uses, or one that would pass
    through a link of the code's, is refused rather than followed."""
    for rel, source in inputs:
        path = Path(rel.rstrip("/"))
        target = workdir / path
        walked = [workdir / p for p in (path, *path.parents) if p != Path(".")]
        if any(p.is_symlink() for p in walked) or target.exists():
            raise PermanentBackendError(
                f"input path {rel!r} is taken in the job's working directory"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copytree(source, target, symlinks=False)
        else:
            target.symlink_to(source, target_is_directory=True)


def _give(folder: Path, uid: int) -> None:
    """`folder` and everything in it to `uid` (and group `uid`), the folder 0700."""
    if folder.stat().st_uid != uid:
        for root, dirs, files in os.walk(folder):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), uid, uid)
        os.chown(folder, uid, uid)
    os.chmod(folder, 0o700)


PRIVATE_DIRS = ("home", "tmp")  # in a worker's folder: its HOME and TMPDIR


def private_dirs(base: dict[str, str], wdir: Path, uid: int | None = None) -> dict[str, str]:
    """`base` with HOME and TMPDIR in the worker's own folder: a job must not find the
    server's files (``~/.kaon``, its tokens and config) through ``~``, nor share a
    temporary folder with the server or with another job. Owned by `uid` when the
    worker runs as that user."""
    home, tmp = (wdir / name for name in PRIVATE_DIRS)
    for folder in (home, tmp):
        folder.mkdir(mode=0o700, exist_ok=True)
        if uid is not None:
            os.chown(folder, uid, uid)
    env = {k: v for k, v in base.items() if k not in _SERVER_DIRS}
    user_base = site.getuserbase()  # packages installed with `pip install --user`
    if "PYTHONUSERBASE" not in env and os.path.isdir(user_base):
        env["PYTHONUSERBASE"] = user_base  # found through HOME before; keep finding them
    env.update(HOME=str(home), TMPDIR=str(tmp))
    return env


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """A file only this user can read, made so from the start (never briefly 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, and readable by this user only whatever the umask (a launch spec
    holds the worker's whole environment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid_info: dict[str, Any]) -> bool:
    """True if the recorded process still runs (and is not a reused pid or a zombie)."""
    try:
        proc = psutil.Process(int(pid_info["pid"]))
        if (
            pid_info.get("create_time") is not None
            and abs(proc.create_time() - float(pid_info["create_time"])) > 0.01
        ):
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
