"""Kaon on a Ray cluster: job start latency against Ray Jobs and Kaon's local executor,
a burst of jobs across the Ray nodes, and a node added and removed by Ray's autoscaler.

Everything runs on this machine, on loopback, side by side in one run:

``latency``
    One Ray cluster started here (``ray.cluster_utils.Cluster``: a head with 0 CPUs and
    the dashboard, plus 3 worker nodes of 2 CPUs and 2 GiB each), with no driver in this
    process. Submit -> running and submit -> succeeded of a trivial job (``python -c
    pass``, 0.5 CPU, 128 MiB), medians of ``--runs`` sequential jobs for each of:

    * Kaon, Ray pool: a control plane attached to the cluster (``KAON_RAY_ADDRESS``), the
      job pinned to the Ray nodes with the label ``kaon.io/pool: ray``;
    * Ray Jobs: the same cluster's ``JobSubmissionClient``, the entrypoint asking for the
      same 0.5 CPU and 128 MiB (so it runs on a worker node, as Kaon's job does), status
      polled every 10 ms;
    * Kaon, local executor: a second control plane with no Ray pool, whose one node is
      this machine declared as 2 CPUs and 2 GiB (the shape of one Ray node). A second
      process, because a control plane with a Ray pool cannot pin a job to its own node
      (that node carries no label), and because it is then exactly the local executor
      users run. Both control planes run during the whole part.

    The three are measured round-robin (one job of each per round), so that the load of
    this shared machine falls on all of them alike, after one warm-up job each (not
    counted). Every poll is 10 ms apart. Ratios: Ray Jobs / Kaon on Ray (goal >= 10x)
    and Kaon on Ray / Kaon local (goal <= 2x).

``burst``
    ``--burst`` (200) trivial jobs submitted at once to the Ray pool of the same cluster
    and control plane (0.5 CPU and 128 MiB each, so four run on each node at a time):
    wall time from the first submit until every job has ended, whether all succeeded
    (none failed, none missing), and how many ran on each node.

``autoscale``
    Ray's autoscaler (v1) with its fake multi-node provider: ``ray start --head --block``
    with an autoscaling config written here (one node type: 2 CPUs, at most 2 nodes,
    idle timeout ``--idle-timeout-s``), ``RAY_FAKE_CLUSTER=1`` and
    ``AUTOSCALER_UPDATE_INTERVAL_S=1``, no worker node at first, and a control plane
    attached to it. Measured: from submitting a job that fits no node (1 CPU, 256 MiB,
    on the Ray pool) until a new node is alive and until the job's worker runs on it;
    from the job's end (as polled) until Ray calls the node idle and until the
    autoscaler removes it. Ray 2.60's ``AutoscalingCluster`` is not used: its wheel lacks
    ``fake_multi_node/example.yaml`` and its ``start()`` runs a machine-wide ``ray stop``.
    Before Kaon attaches, Ray alone is timed as a baseline: one node asked for directly
    (``request_resources``, written to the GCS) until it is alive, and the request
    withdrawn until the autoscaler removes it. This also primes the v1 autoscaler: the
    fake provider cannot declare a node type's memory (Ray refuses ``memory`` as a custom
    resource), so the autoscaler learns it only from a running node of the type, and
    until then finds no node type for a request that names memory (Kaon's did, at one
    time). The cluster has no worker node again when Kaon's job is submitted.

Run (about 2 minutes on a 2-core machine shared with other work; every wait is bounded)::

    .venv/bin/python benchmarks/pool_latency.py [--runs 10] [--burst 200]
        [--parts latency,burst,autoscale] [--no-autoscale] [--idle-timeout-s 6] [--json]

Needs ``pip install 'ray[default]'``. Nothing outside this run is touched: the
processes it starts carry ``KAON_BENCH_RUN=<token>`` in their environment (or its temp
dir, ``/tmp/kaonbench-*``, on their command line), and only those are killed, on exit,
error or Ctrl-C; never ``ray stop``. A run killed with SIGKILL is cleaned up by the next.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psutil

from kaon._version import __version__ as KAON_VERSION
from kaon.core.jobs import JobStatus, JobView
from kaon.core.pools import PoolState
from kaon.sdk.client import Client

T = TypeVar("T")

MIB, GIB = 2**20, 2**30
POLL_S = 0.01  # between status polls, for every system alike
TRIVIAL = [sys.executable, "-c", "pass"]
JOB_CPU, JOB_MEMORY = 0.5, 128 * MIB
RAY_POOL = {"kaon.io/pool": "ray"}
NODES, NODE_CPUS, NODE_MEMORY = 3, 2, 2 * GIB
OBJECT_STORE = 100 * MIB
HEALTH_CHECK = {  # a dead node is noticed in about a second instead of 15
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
MARKER = "KAON_BENCH_RUN"
PLANE_MARKER = "KAON_BENCH_PLANE"
TEMP_PREFIX = "kaonbench-"
OWNER_FILE = "owner.json"
START_S = 120.0  # a node, a head or a control plane that is not up by then: give up
JOB_S = 120.0  # one sequential job
STOP_S = 30.0
PARTS = ("latency", "burst", "autoscale")
RAY_REQUEST_KEY = b"autoscaler_resource_request"  # what request_resources writes (v1)
NODE_STATUS = {0: "UNSPECIFIED", 1: "RUNNING", 2: "DEAD", 3: "IDLE", 4: "DRAINING"}


class BenchError(RuntimeError):
    """A step of the benchmark failed or timed out; the message says which."""


# -- small helpers ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll until `check` returns something truthy; `BenchError` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def _median_ms(values: Sequence[float]) -> float:
    return round(statistics.median(values) * 1e3, 1)


def _tree() -> str:
    """The commit of this checkout, and whether the code differs from it."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if changed else "")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace")
    except OSError:
        return ""


_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when this process dies (PR_SET_PDEATHSIG)."""
    _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for a block (Ray spawns nodes from this process; they inherit)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Teardown is not interrupted by a second Ctrl-C (every step of it is bounded)."""
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _own_sigterm() -> None:
    """SIGTERM unwinds through the ``finally`` blocks like Ctrl-C. Ray installs its own
    handler for every node it starts here (it would kill the nodes before the control
    planes), so this is set again after each."""
    signal.signal(signal.SIGTERM, _interrupt)


# -- this run's processes and files -------------------------------------------------------


def _marked(proc: psutil.Process, token: str, root: str) -> bool:
    """Ours: our temp dir on its command line, or our marker in its environment. The
    environment is read raw: Ray renames its processes (``ray::DashboardAgent``) over
    the start of their environment, which then no longer parses, though the marker,
    further on, is still there."""
    try:
        if any(root in part for part in proc.cmdline()):
            return True
        return _has_env(proc.pid, MARKER, token)
    except psutil.Error:
        return False


def _has_env(pid: int, key: str, value: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{key}={value}\0".encode() in f.read() + b"\0"
    except OSError:
        return False


def _live_marked(token: str, root: str) -> list[psutil.Process]:
    me = os.getpid()
    live = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                proc.pid != me
                and _marked(proc, token, root)
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                live.append(proc)
    return live


def _kill_marked(token: str, root: str, timeout: float = STOP_S) -> list[str]:
    """SIGKILL every live process of this run (marker in its environment or our temp dir
    on its command line) until none is left, and none has appeared a second later (a
    raylet killed while it starts its agents leaves them behind); returns survivors."""
    deadline = time.monotonic() + timeout
    killed: list[psutil.Process] = []
    quiet_since: float | None = None
    while True:
        live = _live_marked(token, root)
        if live:
            quiet_since = None
            for proc in live:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                killed.append(proc)
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
        if time.monotonic() > deadline:
            return [str(p.pid) for p in _live_marked(token, root)]
        time.sleep(0.05 if live else 0.25)
    psutil.wait_procs(killed, timeout=5)  # reaps our own children
    return []


def reap_orphans() -> None:
    """Clean up after earlier runs that were SIGKILLed (their owner process is gone)."""
    for root in Path("/tmp").glob(f"{TEMP_PREFIX}*"):
        try:
            owner = json.loads((root / OWNER_FILE).read_text())
            token, pid, created = str(owner["token"]), int(owner["pid"]), owner["created"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or its owner is still writing it
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).create_time() == created:
                continue  # its run is still going
        _kill_marked(token, str(root))
        shutil.rmtree(root, ignore_errors=True)
        print(f"cleaned up after an earlier run that was killed: {root}", file=sys.stderr)


class Run:
    """The temp dir and marker of this run; `close` kills what is left and removes it."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self.root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))  # short: sockets
        me = psutil.Process()
        (self.root / OWNER_FILE).write_text(
            json.dumps({"pid": me.pid, "created": me.create_time(), "token": self.token})
        )
        os.environ[MARKER] = self.token  # every child inherits it

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update(extra or {})
        return env

    def sweep(self) -> list[str]:
        return _kill_marked(self.token, str(self.root))

    def close(self) -> list[str]:
        left = self.sweep()
        shutil.rmtree(self.root, ignore_errors=True)
        os.environ.pop(MARKER, None)
        return left


# -- a Kaon control plane -----------------------------------------------------------------


class ControlPlane:
    """``python -m kaon.server`` as a subprocess, with a home of its own."""

    def __init__(self, run: Run, name: str, extra: Mapping[str, str]) -> None:
        self.name = name
        self.home = run.root / f"home-{name}"
        self.port = _free_port()
        self.token = "kaon_bench-" + secrets.token_hex(12)
        self.log = run.root / f"server-{name}.log"
        env = run.child_env(
            {
                "KAON_HOME": str(self.home),
                "KAON_PORT": str(self.port),
                "KAON_BOOTSTRAP_TOKEN": self.token,
                PLANE_MARKER: f"{run.token}-{name}",
                **extra,
            }
        )
        self.marker = env[PLANE_MARKER]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kaon.server"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.client = Client(f"http://127.0.0.1:{self.port}", token=self.token)

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"control plane {self.name} exited:\n{_tail(self.log)}")
            try:
                return self.client.healthy()
            except Exception:
                return False

        _until(healthy, START_S, f"control plane {self.name} to answer")

    def wait_pool(self, nodes: int, elastic: bool = False) -> float:
        """Wait until pool ``ray`` is READY with `nodes` nodes; seconds it took."""
        t0 = time.perf_counter()

        def ready() -> bool:
            view = self.client.pools.get("ray")
            if view.state is PoolState.ERROR:
                raise BenchError(f"pool ray: {view.message}")
            return (
                view.state is PoolState.READY and view.nodes == nodes and view.elastic == elastic
            )

        _until(ready, START_S, f"pool ray READY with {nodes} node(s) on {self.name}", 0.2)
        return time.perf_counter() - t0

    def _bridges(self) -> list[psutil.Process]:
        """Its processes that outlive it: the Ray bridge (and anything it started)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if _has_env(proc.pid, PLANE_MARKER, self.marker) and proc.status() != (
                    psutil.STATUS_ZOMBIE
                ):
                    found.append(proc)
        return found

    def stop(self) -> None:
        """SIGTERM, then wait until its Ray bridge (the driver) is gone too: a driver that
        outlives its cluster hangs."""
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        deadline = time.monotonic() + 20
        while (left := self._bridges()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()


# -- Ray: GCS reads without a driver ------------------------------------------------------


class Gcs:
    """A GCS client in this process: reads nodes and writes KV, and is not a driver."""

    def __init__(self, address: str) -> None:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # Cython

        self.address = address
        self.client: Any = GcsClient(address=address)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every worker node (not the head) the GCS knows, dead ones too, by hex id."""
        infos = self.client.get_all_node_info(timeout=5)
        return {
            node_id.hex(): {
                "alive": info.state == 0,
                "death": info.death_info.reason_message,
            }
            for node_id, info in infos.items()
            if not info.is_head_node
        }

    def alive_workers(self) -> set[str]:
        return {k for k, v in self.workers().items() if v["alive"]}

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """What ``ray.autoscaler.sdk.request_resources`` does for the v1 autoscaler."""
        self.client.internal_kv_put(RAY_REQUEST_KEY, json.dumps(bundles).encode(), True, None)

    def autoscaler_ready(self) -> bool:
        raw = self.client.internal_kv_get(b"__autoscaling_status", None, timeout=5)
        return bool(raw) and "autoscaler_report" in json.loads(raw)

    def node_state(self, node_id: str) -> dict[str, Any]:
        """Ray's view of a node for its autoscaler: status, idle time, what keeps it busy."""
        from ray.core.generated import autoscaler_pb2

        reply = autoscaler_pb2.GetClusterResourceStateReply()  # type: ignore[attr-defined]
        reply.ParseFromString(self.client.get_cluster_resource_state())
        for node in reply.cluster_resource_state.node_states:
            if node.node_id.hex() == node_id:
                return {
                    "status": NODE_STATUS.get(node.status, str(node.status)),
                    "idle_s": node.idle_duration_ms / 1e3,
                    "activity": list(node.node_activity),
                    "available": dict(node.available_resources),
                }
        return {}


# -- the local cluster --------------------------------------------------------------------


class LocalCluster:
    """``ray.cluster_utils.Cluster`` with ``connect=False``: nodes are processes of this
    machine started from here, and no driver runs in this process."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.temp = run.root / "ray"
        self.cluster: Any = None
        self.dashboard_url = ""
        self.address = ""
        self.gcs: Gcs | None = None

    def _env(self) -> dict[str, str]:
        # Cluster writes (and deletes) <RAY_TMPDIR>/ray/ray_current_cluster: ours, not
        # the machine's /tmp/ray, so no bare ray.init() elsewhere finds this cluster.
        return {"RAY_TMPDIR": str(self.run.root), "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self) -> float:
        from ray.cluster_utils import Cluster

        t0 = time.perf_counter()
        for attempt in range(3):
            params: dict[str, Any] = {
                "num_cpus": 0,
                "temp_dir": str(self.temp),
                "include_dashboard": True,
                "dashboard_port": _free_port(),
                "dashboard_agent_listen_port": None,
                "object_store_memory": OBJECT_STORE,
                "_system_config": dict(HEALTH_CHECK),
            }
            try:
                with _environ(self._env()):
                    self.cluster = Cluster(
                        initialize_head=True, connect=False, head_node_args=params
                    )
                break
            except Exception:
                if attempt == 2:
                    raise
                self.run.sweep()  # a port taken meanwhile: try again with others
        _own_sigterm()
        self.address = str(self.cluster.address)
        self.dashboard_url = f"http://{self.cluster.webui_url}"
        self.gcs = Gcs(self.address)
        for _ in range(NODES):
            with _environ(self._env()):
                self.cluster.add_node(
                    wait=False,
                    num_cpus=NODE_CPUS,
                    memory=NODE_MEMORY,
                    object_store_memory=OBJECT_STORE,
                    temp_dir=str(self.temp),
                )
            _own_sigterm()
        gcs = self.gcs
        _until(lambda: len(gcs.alive_workers()) == NODES, START_S, f"{NODES} Ray nodes ALIVE")
        return time.perf_counter() - t0

    def stop(self) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if self.cluster is not None:
            with contextlib.suppress(Exception), _environ(self._env()):
                self.cluster.shutdown()
            self.cluster = None
        signal.signal(signal.SIGTERM, handler)


# -- one job, timed -----------------------------------------------------------------------


@dataclass
class Sample:
    to_running_s: float
    to_succeeded_s: float
    node: str = ""


def kaon_job(client: Client, labels: dict[str, str] | None) -> Sample:
    t0 = time.perf_counter()
    job = client.jobs.submit(TRIVIAL, cpu=JOB_CPU, memory=JOB_MEMORY, labels=labels)
    running: float | None = None
    deadline = t0 + JOB_S
    while True:
        view = client.jobs.get(job.id)
        now = time.perf_counter()
        if running is None and view.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            running = now - t0
        if view.status.is_terminal():
            break
        if now > deadline:
            raise BenchError(f"kaon job {job.id} still {view.status.value} after {JOB_S:g} s")
        time.sleep(POLL_S)
    if view.status is not JobStatus.SUCCEEDED:
        raise BenchError(f"kaon job {job.id} {view.status.value}: {view.message}")
    node = view.workers[0].node if view.workers else ""
    return Sample(running if running is not None else now - t0, now - t0, node)


def ray_job(jobs: Any) -> Sample:
    from ray.job_submission import JobStatus as RayStatus

    t0 = time.perf_counter()
    job_id = jobs.submit_job(
        entrypoint=" ".join(TRIVIAL),
        entrypoint_num_cpus=JOB_CPU,
        entrypoint_memory=JOB_MEMORY,
    )
    running: float | None = None
    deadline = t0 + JOB_S
    while True:
        status = jobs.get_job_status(job_id)
        now = time.perf_counter()
        if running is None and status in (RayStatus.RUNNING, RayStatus.SUCCEEDED):
            running = now - t0
        if status.is_terminal():
            break
        if now > deadline:
            raise BenchError(f"ray job {job_id} still {status} after {JOB_S:g} s")
        time.sleep(POLL_S)
    if status != RayStatus.SUCCEEDED:
        info = jobs.get_job_info(job_id)
        raise BenchError(f"ray job {job_id} {status}: {info.message}")
    return Sample(running if running is not None else now - t0, now - t0)


# -- part 1: latency ----------------------------------------------------------------------

SYSTEMS = ("kaon_ray", "ray_jobs", "kaon_local")
GOALS: dict[str, tuple[str, float, bool]] = {  # ratio: label, bound, whether at least
    "ray_jobs_over_kaon_ray": ("Ray Jobs / Kaon on Ray", 10.0, True),
    "kaon_ray_over_kaon_local": ("Kaon on Ray / Kaon local", 2.0, False),
}


def _met(key: str, value: float) -> bool:
    _, bound, at_least = GOALS[key]
    return value >= bound if at_least else value <= bound


LABELS = {
    "kaon_ray": "Kaon, Ray pool (3 nodes)",
    "ray_jobs": "Ray Jobs (same cluster)",
    "kaon_local": "Kaon, local executor",
}


@dataclass
class Latency:
    runs: int
    to_running_ms: dict[str, float]
    to_succeeded_ms: dict[str, float]
    samples_running_ms: dict[str, list[float]]
    samples_succeeded_ms: dict[str, list[float]]
    kaon_ray_nodes: dict[str, int]
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0


def part_latency(
    cluster: LocalCluster, kaon_ray: ControlPlane, local: ControlPlane, runs: int
) -> Latency:
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(cluster.dashboard_url)
    measure: dict[str, Callable[[], Sample]] = {
        "kaon_ray": lambda: kaon_job(kaon_ray.client, RAY_POOL),
        "ray_jobs": lambda: ray_job(jobs),
        "kaon_local": lambda: kaon_job(local.client, None),
    }
    load_before = _load()
    for system in SYSTEMS:  # warm-up, not counted
        measure[system]()
    samples: dict[str, list[Sample]] = {s: [] for s in SYSTEMS}
    for i in range(runs):
        for system in SYSTEMS:
            samples[system].append(measure[system]())
        print(
            f"  round {i + 1}/{runs}: "
            + ", ".join(f"{s} {samples[s][-1].to_succeeded_s * 1e3:.0f} ms" for s in SYSTEMS),
            file=sys.stderr,
            flush=True,
        )
    running = {s: _median_ms([x.to_running_s for x in samples[s]]) for s in SYSTEMS}
    succeeded = {s: _median_ms([x.to_succeeded_s for x in samples[s]]) for s in SYSTEMS}
    ratios: dict[str, dict[str, Any]] = {}
    for key, (top, bottom) in (
        ("ray_jobs_over_kaon_ray", ("ray_jobs", "kaon_ray")),
        ("kaon_ray_over_kaon_local", ("kaon_ray", "kaon_local")),
    ):
        _, bound, at_least = GOALS[key]
        on_running = round(running[top] / running[bottom], 2)
        on_succeeded = round(succeeded[top] / succeeded[bottom], 2)
        ratios[key] = {
            "to_running": on_running,
            "to_succeeded": on_succeeded,
            "goal": f"{'>=' if at_least else '<='} {bound:g}",
            "met_to_running": _met(key, on_running),
            "met_to_succeeded": _met(key, on_succeeded),
        }
    return Latency(
        runs=runs,
        to_running_ms=running,
        to_succeeded_ms=succeeded,
        samples_running_ms={
            s: [round(x.to_running_s * 1e3, 1) for x in samples[s]] for s in SYSTEMS
        },
        samples_succeeded_ms={
            s: [round(x.to_succeeded_s * 1e3, 1) for x in samples[s]] for s in SYSTEMS
        },
        kaon_ray_nodes=dict(Counter(x.node for x in samples["kaon_ray"])),
        ratios=ratios,
        load_before=load_before,
        load_after=_load(),
    )


# -- part 2: burst ------------------------------------------------------------------------


@dataclass
class Burst:
    jobs: int
    cpu: float
    submit_s: float  # submitting all of them, one request each
    wall_s: float  # first submit -> every job ended (as polled, every 0.2 s)
    server_wall_s: float  # first submitted_at -> last finished_at, the server's clock
    succeeded: int
    failed: int
    cancelled: int
    missing: int
    unfinished: int
    restarts: int
    per_node: dict[str, int]
    placement_groups_left: int | None
    problems: list[str] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0


def _placement_groups(dashboard_url: str) -> int | None:
    """Kaon's placement groups still in Ray (the State API over HTTP; no driver)."""
    try:
        from ray.util.state import list_placement_groups

        groups = list_placement_groups(
            address=dashboard_url, limit=10_000, raise_on_missing_output=False
        )
        return sum(1 for g in groups if g.name.startswith("kaon-") and g.state != "REMOVED")
    except Exception as e:
        print(f"  cannot list placement groups: {e}", file=sys.stderr)
        return None


def part_burst(
    cluster: LocalCluster, plane: ControlPlane, count: int, cpu: float, timeout: float
) -> Burst:
    client = plane.client
    load_before = _load()
    t0 = time.perf_counter()
    ids = [
        client.jobs.submit(TRIVIAL, cpu=cpu, memory=JOB_MEMORY, labels=RAY_POOL).id
        for _ in range(count)
    ]
    submit_s = time.perf_counter() - t0
    waiting = [
        JobStatus.QUEUED,
        JobStatus.STARTING,
        JobStatus.RUNNING,
        JobStatus.RETRYING,
        JobStatus.PREEMPTED,
    ]
    wanted = set(ids)
    deadline = t0 + timeout
    unfinished = count
    while time.perf_counter() < deadline:
        unfinished = sum(j.id in wanted for j in client.jobs.list(status=waiting, limit=1000))
        if not unfinished:
            break
        time.sleep(0.2)
    wall_s = time.perf_counter() - t0
    views: dict[str, JobView] = {
        j.id: j for j in client.jobs.list(limit=min(1000, count + 200)) if j.id in wanted
    }
    for job_id in wanted - set(views):
        with contextlib.suppress(Exception):
            views[job_id] = client.jobs.get(job_id)
    statuses = Counter(v.status for v in views.values())
    per_node = Counter(v.workers[0].node for v in views.values() if v.workers)
    submitted = [v.submitted_at for v in views.values()]
    finished = [v.finished_at for v in views.values() if v.finished_at is not None]
    server_wall = (max(finished) - min(submitted)).total_seconds() if finished else 0.0
    problems = sorted(
        {
            f"{v.status.value}: {v.message}"
            for v in views.values()
            if v.status not in (JobStatus.SUCCEEDED, *waiting)
        }
    )[:5]
    left: int | None = None
    for _ in range(20):
        left = _placement_groups(cluster.dashboard_url)
        if not left:
            break
        time.sleep(0.5)
    return Burst(
        jobs=count,
        cpu=cpu,
        submit_s=round(submit_s, 2),
        wall_s=round(wall_s, 2),
        server_wall_s=round(server_wall, 2),
        succeeded=statuses[JobStatus.SUCCEEDED],
        failed=statuses[JobStatus.FAILED],
        cancelled=statuses[JobStatus.CANCELLED],
        missing=count - len(views),
        unfinished=unfinished,
        restarts=sum(v.restart_count + v.preemptions for v in views.values()),
        per_node=dict(sorted(per_node.items())),
        placement_groups_left=left,
        problems=problems,
        load_before=load_before,
        load_after=_load(),
    )


# -- part 3: autoscale --------------------------------------------------------------------

NODE_TYPE = "cpu2"


def autoscaling_config(gcs_address: str, idle_timeout_s: float, name: str) -> dict[str, Any]:
    """The whole config of the fake multi-node provider (every key of Ray's missing
    ``example.yaml``), with ``provider.gcs_address`` (it would assume ``<ip>:6379``)."""
    return {
        "cluster_name": name,
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            NODE_TYPE: {
                "resources": {"CPU": NODE_CPUS, "object_store_memory": OBJECT_STORE},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class AutoscalingHead:
    """``ray start --head --block`` with the v1 autoscaler and the fake provider."""

    def __init__(self, run: Run, idle_timeout_s: float) -> None:
        self.run = run
        self.dir = run.root / "as"
        self.dir.mkdir()
        self.temp = self.dir / "ray"
        self.log = self.dir / "ray-start.log"
        self.idle_timeout_s = idle_timeout_s
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.gcs: Gcs | None = None

    def start(self) -> float:
        import ray._private.services as services

        t0 = time.perf_counter()
        ip = str(services.get_node_ip_address())  # type: ignore[no-untyped-call]
        for attempt in range(3):
            port = _free_port()
            self.address = f"{ip}:{port}"
            config = self.dir / "autoscaling.json"
            config.write_text(
                json.dumps(autoscaling_config(self.address, self.idle_timeout_s, self.run.token))
            )
            argv = [
                str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                f"--port={port}", f"--node-ip-address={ip}", "--num-cpus=0", "--num-gpus=0",
                f"--autoscaling-config={config}", f"--temp-dir={self.temp}",
                f"--object-store-memory={OBJECT_STORE}", "--include-dashboard=false",
                f"--dashboard-port={_free_port()}", "--dashboard-agent-listen-port=0",
                f"--ray-client-server-port={_free_port()}",
                f"--system-config={json.dumps(HEALTH_CHECK)}", "--disable-usage-stats",
            ]  # fmt: skip
            env = self.run.child_env(
                {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
            )
            env.pop("RAY_enable_autoscaler_v2", None)  # v2 needs the missing example.yaml
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            try:
                self._wait_up(self.proc)
                break
            except BenchError:
                self.stop()
                if attempt == 2 or "port" not in _tail(self.log).lower():
                    raise
        self.gcs = Gcs(self.address)
        gcs = self.gcs
        _until(gcs.autoscaler_ready, START_S, "the autoscaler's first report", 0.2)
        return time.perf_counter() - t0

    def _wait_up(self, proc: subprocess.Popen[bytes]) -> None:
        address_file = self.temp / "ray_current_cluster"  # written once the head is up

        def up() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"ray start --head exited:\n{_tail(self.log)}")
            return address_file.exists()

        _until(up, START_S, "the autoscaling head")

    def stop(self) -> None:
        self.gcs = None
        if self.proc is not None:
            # Its fake worker nodes are the monitor's children, not the head's: the run's
            # sweep (marker and temp dir) kills them all.
            self.run.sweep()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc = None


@dataclass
class Autoscale:
    idle_timeout_s: float
    ray_request_to_node_s: float  # Ray alone: request_resources -> node ALIVE
    ray_release_to_removed_s: float  # Ray alone: request withdrawn -> node removed
    submit_to_node_alive_s: float | None = None  # Kaon's job submitted -> a new node ALIVE
    submit_to_running_s: float | None = None  # -> the job running (on that node?)
    on_added_node: bool = False
    node: str = ""
    waiting_reason: str = ""
    end_to_idle_s: float | None = None  # the job seen ended -> the node IDLE until removed
    end_to_removed_s: float | None = None  # the job's end -> the node removed
    removed_within_s: float = 0.0  # how long removal was waited for
    death_reason: str = ""
    busy_with: list[str] = field(default_factory=list)  # Ray's reasons it was not idle
    node_timeline: list[list[Any]] = field(default_factory=list)  # [s after end, status, why]
    node_state_if_kept: dict[str, Any] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0


def _baseline(gcs: Gcs, idle_timeout_s: float) -> tuple[float, float]:
    """Ray alone: a node asked for until ALIVE, then the request withdrawn until it is
    removed (this also primes the autoscaler; see the module docstring)."""
    t0 = time.perf_counter()
    gcs.request_resources([{"CPU": float(NODE_CPUS)}])
    _until(lambda: len(gcs.alive_workers()) == 1, START_S, "a node for request_resources")
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    gcs.request_resources([])
    _until(lambda: not gcs.alive_workers(), idle_timeout_s + START_S, "the node's removal")
    return up, time.perf_counter() - t0


def part_autoscale(run: Run, idle_timeout_s: float, removal_wait_s: float) -> Autoscale:
    head = AutoscalingHead(run, idle_timeout_s)
    plane: ControlPlane | None = None
    try:
        print(f"  head: {head.start():.1f} s", file=sys.stderr, flush=True)
        gcs = head.gcs
        assert gcs is not None
        load_before = _load()
        ray_up, ray_down = _baseline(gcs, idle_timeout_s)
        result = Autoscale(idle_timeout_s, round(ray_up, 2), round(ray_down, 2))
        result.load_before = load_before
        print(
            f"  Ray alone: node up {ray_up:.1f} s, removed {ray_down:.1f} s after release",
            file=sys.stderr,
            flush=True,
        )

        plane = ControlPlane(
            run,
            "autoscale",
            {
                "KAON_RAY_ADDRESS": head.address,
                "KAON_RAY_NODE_DIR": str(run.root / "nodes-autoscale"),
                "KAON_NODE_CPUS": "0.5",
                "KAON_NODE_MEMORY": "1Gi",
            },
        )
        plane.wait_healthy()
        plane.wait_pool(0, elastic=True)
        before = set(gcs.workers())
        client = plane.client
        t0 = time.perf_counter()
        job = client.jobs.submit(TRIVIAL, cpu=1, memory=256 * MIB, labels=RAY_POOL)
        running: float | None = None
        deadline = t0 + START_S
        while True:
            view = client.jobs.get(job.id)
            now = time.perf_counter()
            if result.submit_to_node_alive_s is None and gcs.alive_workers() - before:
                result.submit_to_node_alive_s = round(now - t0, 2)
            if view.waiting_reason and not result.waiting_reason:
                result.waiting_reason = view.waiting_reason
            if running is None and view.status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
                running = now - t0
            if view.status.is_terminal():
                break
            if now > deadline:
                raise BenchError(
                    f"the job that fits no node is still {view.status.value} after "
                    f"{START_S:g} s: {view.waiting_reason or view.message}"
                )
            time.sleep(0.05)
        ended = now
        if view.status is not JobStatus.SUCCEEDED:
            raise BenchError(f"the job {view.status.value}: {view.message}")
        result.submit_to_running_s = round(running if running is not None else now - t0, 2)
        result.node = view.workers[0].node if view.workers else ""
        nodes = {n.id: n for n in client.nodes.list()}
        ray_id = (
            nodes[result.node].labels.get("ray.io/node-id", "") if result.node in nodes else ""
        )
        result.on_added_node = bool(ray_id) and ray_id not in before
        print(
            f"  Kaon: running {result.submit_to_running_s:.1f} s after submit on "
            f"{result.node} (added: {result.on_added_node})",
            file=sys.stderr,
            flush=True,
        )
        result.removed_within_s = idle_timeout_s + removal_wait_s
        deadline = ended + result.removed_within_s
        while time.perf_counter() < deadline:
            state = gcs.workers().get(ray_id, {})
            now = time.perf_counter()
            if state and not state["alive"]:
                result.end_to_removed_s = round(now - ended, 2)
                result.death_reason = str(state["death"])
                break
            with contextlib.suppress(Exception):
                seen = gcs.node_state(ray_id)
                status, activity = seen.get("status", "?"), seen.get("activity", [])
                for reason in activity:
                    if reason not in result.busy_with:
                        result.busy_with.append(reason)
                timeline = result.node_timeline
                if not timeline or timeline[-1][1:] != [status, "; ".join(activity)]:
                    timeline.append([round(now - ended, 2), status, "; ".join(activity)])
                # Idle for good: from the last time it became IDLE (polled every 0.2 s).
                if status != "IDLE":
                    result.end_to_idle_s = None
                elif result.end_to_idle_s is None:
                    result.end_to_idle_s = round(now - ended, 2)
            time.sleep(0.2)
        else:
            with contextlib.suppress(Exception):
                result.node_state_if_kept = gcs.node_state(ray_id)
        result.load_after = _load()
        return result
    finally:
        with _shielded():
            if plane is not None:
                plane.stop()  # before the head: a driver must not outlive its cluster
            head.stop()


# -- the run ------------------------------------------------------------------------------


@dataclass
class Report:
    date: str
    ray_version: str
    kaon_version: str
    kaon_tree: str  # the commit measured, "+ changes" when the work tree differs from it
    python: str
    machine: str
    cpus: int
    load_start: float
    load_end: float = 0.0
    duration_s: float = 0.0
    setup_s: dict[str, float] = field(default_factory=dict)
    latency: Latency | None = None
    burst: Burst | None = None
    autoscale: Autoscale | None = None
    errors: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def _attempt(report: Report, part: str, step: Callable[[], None]) -> None:
    """One part; a failure is reported and the other parts still run."""
    print(f"{part} ...", file=sys.stderr, flush=True)
    try:
        step()
    except (BenchError, OSError, RuntimeError, AssertionError) as e:
        report.errors[part] = f"{type(e).__name__}: {e}"
        print(f"{part} failed: {e}", file=sys.stderr, flush=True)
    except Exception as e:  # an SDK error from the control plane, a Ray error
        report.errors[part] = f"{type(e).__name__}: {e}"
        print(f"{part} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def cluster_parts(run: Run, args: argparse.Namespace, parts: set[str], report: Report) -> None:
    """Latency and burst share one local cluster and the control plane attached to it."""
    cluster = LocalCluster(run)
    planes: list[ControlPlane] = []
    try:
        report.setup_s["cluster"] = round(cluster.start(), 1)
        print(f"cluster: {report.setup_s['cluster']} s", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        kaon_ray = ControlPlane(
            run,
            "ray",
            {
                "KAON_RAY_ADDRESS": cluster.address,
                "KAON_RAY_NODE_DIR": str(run.root / "nodes-ray"),
                "KAON_NODE_CPUS": "0.5",
                "KAON_NODE_MEMORY": "1Gi",
            },
        )
        planes.append(kaon_ray)
        local: ControlPlane | None = None
        if "latency" in parts:
            local = ControlPlane(
                run, "local", {"KAON_NODE_CPUS": str(NODE_CPUS), "KAON_NODE_MEMORY": "2Gi"}
            )
            planes.append(local)
        for plane in planes:
            plane.wait_healthy()
        kaon_ray.wait_pool(NODES)
        report.setup_s["control_planes"] = round(time.perf_counter() - t0, 1)
        print(f"control planes: {report.setup_s['control_planes']} s", file=sys.stderr)
        if local is not None:

            def latency() -> None:
                assert local is not None
                report.latency = part_latency(cluster, kaon_ray, local, args.runs)

            _attempt(report, "latency", latency)
        if "burst" in parts:

            def burst() -> None:
                report.burst = part_burst(
                    cluster, kaon_ray, args.burst, args.burst_cpu, args.burst_timeout
                )

            _attempt(report, "burst", burst)
    finally:
        with _shielded():
            for plane in planes:
                plane.stop()  # before the cluster: a driver must not outlive it
            cluster.stop()
            run.sweep()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="sequential jobs per system")
    parser.add_argument("--burst", type=int, default=200, help="jobs submitted at once")
    parser.add_argument("--burst-cpu", type=float, default=JOB_CPU, help="CPU per burst job")
    parser.add_argument("--burst-timeout", type=float, default=240, help="give up the burst")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument(
        "--autoscale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the autoscale part if --parts names it (default: on)",
    )
    parser.add_argument("--idle-timeout-s", type=float, default=6.0, help="autoscaler's")
    parser.add_argument(
        "--removal-wait-s", type=float, default=30.0, help="past the idle timeout, at most"
    )
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - set(PARTS) or not parts:
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    if not args.autoscale:
        parts.discard("autoscale")
    if not 1 <= args.burst <= 1000:
        parser.error("--burst: 1 to 1000")
    if args.runs < 1:
        parser.error("--runs: at least 1")

    try:
        import ray
    except ImportError:
        print("needs Ray: pip install 'ray[default]'", file=sys.stderr)
        return 2
    os.environ["RAY_AUTH_MODE"] = "disabled"  # loopback clusters, like Kaon's own
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    report = Report(
        date=datetime.now().astimezone().isoformat(timespec="seconds"),
        ray_version=str(ray.__version__),
        kaon_version=KAON_VERSION,
        kaon_tree=_tree(),
        python=platform.python_version(),
        machine=f"{platform.system()} {platform.machine()}",
        cpus=os.cpu_count() or 0,
        load_start=_load(),
    )
    reap_orphans()
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where it was ignored
    _own_sigterm()
    run = Run()
    try:
        if parts & {"latency", "burst"}:
            _attempt(report, "cluster", lambda: cluster_parts(run, args, parts, report))
        if "autoscale" in parts:

            def autoscale() -> None:
                report.autoscale = part_autoscale(run, args.idle_timeout_s, args.removal_wait_s)

            _attempt(report, "autoscale", autoscale)
    except KeyboardInterrupt:
        report.errors["interrupted"] = "stopped by a signal; cleaned up"
        print("interrupted: cleaning up", file=sys.stderr, flush=True)
    finally:
        with _shielded():
            report.leftovers = run.close()
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    report.load_end = _load()
    report.duration_s = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(markdown(report, args))
    return 1 if report.errors or report.leftovers else 0


# -- the tables ---------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:,.0f} ms"


def _x(value: float) -> str:
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def markdown(r: Report, args: argparse.Namespace) -> str:
    out = [
        f"## Kaon on a Ray pool: {r.date}",
        "",
        f"Ray {r.ray_version}, Kaon {r.kaon_version} ({r.kaon_tree}), Python {r.python}, "
        f"{r.machine}, {r.cpus} CPUs; load average (1 min) {r.load_start} at the start, "
        f"{r.load_end} at the end; {r.duration_s:.0f} s in all.",
    ]
    if r.setup_s:
        out.append(
            "Setup: " + ", ".join(f"{k.replace('_', ' ')} {v} s" for k, v in r.setup_s.items())
        )
    if r.latency is not None:
        lat = r.latency
        out += [
            "",
            f"### Start latency: `python -c pass`, medians of {lat.runs} sequential jobs "
            f"(load {lat.load_before} -> {lat.load_after})",
            "",
            "| system | submit -> running | submit -> succeeded |",
            "|---|---:|---:|",
        ]
        for s in SYSTEMS:
            out.append(
                f"| {LABELS[s]} | {_ms(lat.to_running_ms[s])} | {_ms(lat.to_succeeded_ms[s])} |"
            )
        out += [
            "",
            "| ratio | submit -> running | submit -> succeeded | goal |",
            "|---|---:|---:|---|",
        ]
        for key, (label, bound, at_least) in GOALS.items():
            cells = [
                f"{_x(v)} ({'met' if _met(key, v) else 'missed'})"
                for v in (lat.ratios[key]["to_running"], lat.ratios[key]["to_succeeded"])
            ]
            out.append(
                f"| {label} | {cells[0]} | {cells[1]} | {'>=' if at_least else '<='} {bound:g}x |"
            )
    if r.burst is not None:
        b = r.burst
        nodes = ", ".join(f"{n}: {c}" for n, c in b.per_node.items()) or "-"
        ok = b.succeeded == b.jobs and not (b.failed or b.missing or b.unfinished)
        out += [
            "",
            f"### Burst: {b.jobs} trivial jobs at once on the Ray pool ({b.cpu:g} CPU each) "
            f"(load {b.load_before} -> {b.load_after})",
            "",
            "| submitted in | all ended after | succeeded | failed | missing | unfinished "
            "| restarts | placement groups left | verdict |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {b.submit_s:.1f} s | {b.wall_s:.1f} s (server clock {b.server_wall_s:.1f} s) "
            f"| {b.succeeded} | {b.failed} | {b.missing} | {b.unfinished} | {b.restarts} "
            f"| {'-' if b.placement_groups_left is None else b.placement_groups_left} "
            f"| {'none lost' if ok else 'LOST OR FAILED'} |",
            "",
            f"Jobs per node: {nodes}.",
        ]
        if b.problems:
            out.append("Problems: " + "; ".join(b.problems))
    if r.autoscale is not None:
        a = r.autoscale

        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} s"

        if a.end_to_removed_s is not None:
            removed = f"{a.end_to_removed_s:.1f} s ({a.death_reason or 'removed'})"
        else:
            state = a.node_state_if_kept
            why = (
                f"; Ray sees it {state.get('status')}, idle {state.get('idle_s', 0):.1f} s"
                if state
                else ""
            )
            removed = f"not removed within {a.removed_within_s:.0f} s{why}"
        out += [
            "",
            f"### Autoscale: Ray's v1 autoscaler, fake provider, idle timeout "
            f"{a.idle_timeout_s:g} s (load {a.load_before} -> {a.load_after})",
            "",
            "| step | time |",
            "|---|---:|",
            f"| Ray alone: request_resources -> node alive | {secs(a.ray_request_to_node_s)} |",
            "| Ray alone: request withdrawn -> node removed "
            f"| {secs(a.ray_release_to_removed_s)} |",
            f"| Kaon: submit a job that fits no node -> new node alive "
            f"| {secs(a.submit_to_node_alive_s)} |",
            f"| Kaon: submit -> the job running on the added node "
            f"| {secs(a.submit_to_running_s)}{'' if a.on_added_node else ' (another node!)'} |",
            f"| Kaon: the job's end -> Ray sees the node idle (for good) "
            f"| {secs(a.end_to_idle_s)} |",
            f"| Kaon: the job's end -> the idle node removed | {removed} |",
        ]
        notes = []
        if a.waiting_reason:
            notes.append(f'while it waited, Kaon said "{a.waiting_reason}"')
        if a.node_timeline:
            steps = ", ".join(
                f"{t:.1f} s {status}" + (f" ({why.rstrip('.')})" if why else "")
                for t, status, why in a.node_timeline
            )
            notes.append(f"Ray's view of the node after the job's end: {steps}")
        if notes:
            out += ["", "Notes: " + "; ".join(notes) + "."]
    if r.errors:
        out += ["", "### Errors", ""] + [f"- {k}: {v}" for k, v in r.errors.items()]
    if r.leftovers:
        out.append(f"\nProcesses that survived cleanup: {', '.join(r.leftovers)}")
    del args
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
