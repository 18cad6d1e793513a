"""Real Ray clusters for tests: several nodes on this machine, an autoscaling head, and
"hosts" made of Linux network namespaces.

Why real clusters: the Ray executor's hard parts (a node that dies, a node that appears
because the autoscaler was asked for one, a control plane that is not a node) are
behaviours of Ray itself, which no fake reproduces. Each helper is a context manager that
starts what it promises, waits until it is really there (bounded: `HarnessTimeout` with the
relevant log tail instead of a hang) and, in ``finally``, kills every process it started,
by pid, and removes every temporary directory, namespace and link it made. A teardown
problem fails a passing test (`HarnessTeardownError`) and is printed, never raised over
the exception of a failing one.

Rules every helper keeps, because this machine is shared with other engineers' clusters:

* Never ``ray stop``: it kills every Ray process on the machine. Processes are found by a
  marker only ours carry (the cluster's own temp dir in their command line, or
  ``KAONTEST_RAY_HARNESS=<token>`` in their environment, which every process we start and
  every child of theirs inherits), plus their descendants, or by ``ip netns pids``; they
  are killed with SIGKILL and waited for (bounded) until even their zombies are reaped.
* No fixed ports: 6379 belongs to a system Redis here, and Ray's defaults (8265 dashboard,
  52365 dashboard agent, 10001 Ray Client) would collide between two clusters on one
  machine (pytest-xdist). The `local_cluster` GCS binds a port the kernel picks (port 0, no
  race); the ``ray start`` head of `autoscaling_cluster` gets ports probed free just before
  (a tiny race: retried). Namespaces have ports of their own, so `Hosts.ray_head` keeps
  Ray's defaults.
* Never ``/tmp/ray``: each run gets ``/tmp/kaontest-XXXXXXXX`` (short on purpose: Ray's
  Unix socket paths under it must stay below 108 bytes), and ``Cluster``'s
  ``ray_current_cluster`` address file goes there too (``RAY_TMPDIR`` while Ray writes or
  deletes it), so a bare ``ray.init()`` elsewhere never finds a test cluster and a test
  never deletes another engineer's address file.
* Fast node-death detection on every head (`FAST_HEALTH_CHECK`, Ray's ``health_check_*``
  system config, period 0.5 s x 3 failures): a node killed with SIGKILL is DEAD in the GCS
  1.0-1.5 s later instead of about 15 s. The timeout (1 s) is longer than the period so a
  loaded machine does not declare a live node dead; a killed node refuses connections at
  once, so the timeout does not slow its detection.
* A run whose test process died without teardown (SIGKILL, ``os._exit``) is cleaned up by
  the next helper that starts: each temp dir holds ``owner.json`` (pid and start time of the
  test process, the names of its namespaces and links), and `reap_orphans` removes the runs
  whose owner is gone, and only those.
* Missing Ray, not root, no ``ip``, namespaces not permitted: `pytest.skip` with the
  reason, except under ``CI=true``, where it fails (the repository's rule for PostgreSQL).

Timings below: Ray 2.60.0, Python 3.11, this 2-core machine while other engineers' test
runs kept the load average at 4-9; the findings' quieter numbers are 30-50 % lower.

`local_cluster` (``ray.cluster_utils.Cluster``, the nodes started from this process)
    Head with 0 CPUs by default, no dashboard UI (``include_dashboard=True`` adds it and
    `LocalCluster.dashboard_url`), 100 MiB object store per node. ``Cluster(connect=False)``
    works: nodes are started, added and removed with no driver in the test process (the
    harness reads the node table through a GCS client, which is not a driver), so drivers
    (the Kaon bridge) run in other processes with ``ray.init(address=cluster.address)``.
    Head alone 3.4-6.3 s; each `LocalCluster.add_node` 2.1-3.2 s (median 2.2 s); head and
    two nodes 8.8-12.5 s. ``remove_node(graceful=True)`` (SIGTERM) returns in 0.03-0.07 s
    with the node already DEAD ("received SIGTERM"); ``remove_node(graceful=False)``
    (SIGKILL of the raylet and its agents, a crash) returns in 0.01 s and the GCS marks the
    node DEAD 1.1-1.5 s later ("health check failed due to missing too many heartbeats").
    Teardown 1.2-1.3 s.

`autoscaling_cluster` (``ray start --head`` with Ray's fake multi-node provider)
    ``ray.cluster_utils.AutoscalingCluster`` cannot be used in 2.60: the wheel lacks
    ``fake_multi_node/example.yaml`` (its constructor raises) and its ``start()`` runs a
    machine-wide ``ray stop --force``. So the complete config (`autoscaling_config`: every
    key of Ray's example file) is JSON in the run's own directory, nothing in site-packages
    is touched, and the head runs as ``RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1
    ray start --head --block --port <free> --num-cpus 0 --autoscaling-config <cfg>
    --temp-dir <own> ...`` with ``provider.gcs_address`` set (the provider otherwise
    assumes ``<ip>:6379``). The block starts once the monitor has published an
    ``autoscaler_report``, i.e. once it acts on requests.
    Autoscaler **v1**, Ray's default for ``ray start``: it scales on resource demands and on
    ``ray.autoscaler.sdk.request_resources``, which is what Kaon uses, and it never calls
    ``fillout_defaults``. v2 would also scale on label selectors, but its monitor reads the
    missing ``example.yaml`` in ``fillout_defaults`` and dies silently (only
    ``logs/monitor.err`` tells), so it cannot run without patching site-packages.
    Fake worker nodes are ``ray._private.node.Node`` objects inside the monitor process,
    ids ``fff...f00001`` upwards, with the node type's labels, this machine's IP and the
    head's temp dir; the autoscaler terminates idle ones with "Terminated by autoscaler."
    (graceful, DEAD at once).
    Node types from a driver: Ray has ``ray._private.state.state.get_max_resources_from_
    cluster_config()`` and ``get_cluster_config()``, but they read a ``ClusterConfig`` that
    only an outside platform reports to the GCS; no monitor of 2.60 (v1 or v2) reports it,
    so on a plain cluster both return ``None`` (checked from a driver).
    ``publish_cluster_config=True`` reports one built from the node types
    (``GcsClient.report_cluster_config``), as such a platform would; a driver then gets
    e.g. ``{"CPU": 4, "kaon_slot": 8, "object_store_memory": 209715200}`` for two 2-CPU
    nodes, the same as `AutoscalingHead.max_resources`. The v1 monitor's own status (node
    counts, pending launches, demands) is JSON under ``__autoscaling_status`` in the GCS KV
    (`AutoscalingHead.autoscaler_status`).
    Idle timeout 3 s, one 2-CPU node type: head ready 5.2-6.0 s; from
    ``request_resources(bundles=[{"CPU": 2}])`` to the node ALIVE 2.3-3.3 s; from
    ``request_resources(bundles=[])`` to its removal 0.6-4.1 s (the idle timeout counts
    from when the node became idle, not from the call, plus one or two 1 s updates: a node
    idle longer than the timeout goes at the next update); two nodes from none
    4.0-5.8 s (one launch per update); teardown with two fake nodes up 1.5-2.4 s.

`netns_hosts` (network namespaces on a bridge)
    ``count`` namespaces ``kaontest-<4 hex>-h<i>``, each with a veth ``kaontest-<4 hex><ii>``
    on a bridge ``kaontest-<4 hex>br`` (interface names stop at 15 characters) in a random
    unused ``10.<231-250>.<0-255>.0/24``: the root namespace is ``.1`` on the bridge, host
    ``i`` is ``.(i+2)``, loopback up, no default route, no sysctl changed. Every Ray node
    has its own ``--temp-dir`` and an explicit ``--node-ip-address``: processes and ``/tmp``
    are shared between namespaces, and without that a node or a driver would use another
    namespace's raylet through its Unix sockets.
    Three hosts 0.1-0.5 s; a head (0 CPU) 5.4-7.4 s and each worker 3.4-7.2 s until ALIVE
    in the GCS; `Hosts.kill_host` returns in 0.03-0.09 s and the head marks that host's node
    DEAD 1.0-1.5 s after the SIGKILL; ``ray start`` again on that host joins as a new node
    (2.1-5.5 s), the old id stays DEAD; teardown of three hosts and a root node 1.4-2.6 s.
    How a process in the root namespace joins (what the Kaon bridge does; verified with
    this harness): give it a temp dir from `Hosts.new_temp_dir`, so teardown kills it too,
    and run ``ray start --address=<head ip>:<port> --num-cpus=0 --num-gpus=0
    --node-ip-address=<hosts.root_ip> --temp-dir=<hosts.new_temp_dir("root")>
    --labels=kaon.io/role=control-plane --disable-usage-stats
    --object-store-memory=78643200`` (5.2-8.1 s), then in the driver
    ``ray.init(address="<head ip>:<port>", _node_ip_address=<hosts.root_ip>)``: the driver
    sits on that node and its tasks run on the hosts. Without ``_node_ip_address`` a
    driver takes whichever raylet it finds in the shared process table; a plain
    ``ray.init`` from a machine that is no node fails after
    ``RAY_gcs_server_request_timeout_seconds`` (60 s by default).

Pitfalls for the control plane's Ray driver in a subprocess:

* Stop the driver (the bridge) before leaving the block. A driver still connected when a
  `local_cluster` goes lingers, blocked, for 60 s (``gcs_rpc_server_reconnect_timeout_s``)
  and then exits with status 1 and "Failed to connect to GCS within 60 seconds"; on an
  `autoscaling_cluster` it crashed with a C++ stack trace within 2 s. The harness does not
  kill drivers: they are the test's processes.
* All `local_cluster` and `autoscaling_cluster` nodes share this machine's IP (192.0.2.2
  here): ``node:<ip>`` cannot tell them apart (use ``ray.io/node-id`` or labels), and every
  node reports the whole machine's memory unless `NodeSpec.memory` says otherwise. A
  driver there attaches to the head's raylet (checked), which has 0 CPUs; a driver needs
  none. A raylet's command line spells ``--node_ip_address=<ip>`` (underscores) but
  ``--gcs-address=<ip:port>`` (dashes), which matters to code that looks for a local node.
* Give a bridge that may join the cluster a state dir under the helper's ``temp_dir``
  (`LocalCluster.temp_dir`, `AutoscalingHead.temp_dir`, `Hosts.new_temp_dir`): the node
  it joins then has that path in its command line, and teardown kills it too.
* ``request_resources`` stays in the GCS until the next call: a test that asked for nodes
  must call ``request_resources(bundles=[])`` or they never go idle.
* Drivers need the executor's bounded-connect environment (``RAY_gcs_rpc_server_connect_
  timeout_s`` and friends): a plain ``ray.init`` on a dead address blocks for minutes.
* Threads: every process the helpers start is SIGKILLed when the *thread* that started it
  ends (``PR_SET_PDEATHSIG``; Ray does the same for its own processes). `local_cluster` and
  `LocalCluster.add_node` must run on the main thread (Ray also installs a SIGTERM handler
  per node; the previous handler is restored at teardown); `Hosts.spawn`, `Hosts.ray_head`
  and `Hosts.ray_worker` on the thread that entered `netns_hosts`. Both raise
  `RuntimeError` otherwise, instead of nodes that vanish at random (``asyncio.to_thread``).
* If the test process is SIGKILLed, `local_cluster` nodes and the `autoscaling_cluster`
  head die with it, but the fake worker nodes (the monitor starts them without fate
  sharing), the root-namespace node and the namespaces stay until the next helper's
  `reap_orphans`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import psutil
import pytest

__all__ = [
    "FAST_HEALTH_CHECK",
    "OBJECT_STORE_BYTES",
    "AutoscalingHead",
    "GcsNode",
    "HarnessTimeout",
    "HostRayNode",
    "Hosts",
    "LocalCluster",
    "NodeSpec",
    "NodeTypeSpec",
    "autoscaling_cluster",
    "local_cluster",
    "netns_hosts",
    "reap_orphans",
]

MARKER_ENV = "KAONTEST_RAY_HARNESS"
"""Environment variable every process we start carries (value: the cluster's token)."""

OBJECT_STORE_BYTES = 100 * 2**20
"""Object store per node: small, several nodes share this machine's /dev/shm."""

FAST_HEALTH_CHECK: Mapping[str, int] = MappingProxyType(
    {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_timeout_ms": 1000,
        "health_check_failure_threshold": 3,
    }
)
"""The head's GCS health check: a killed node is DEAD after about 1.0-1.5 s (default 15 s)."""

START_TIMEOUT_S = 90.0
"""Upper bound for one node or head to be up: measured 1-6 s, with room for a busy CI box."""

TEARDOWN_TIMEOUT_S = 30.0
"""Upper bound for killing everything a helper started."""

REAP_WAIT_S = 10.0
"""How long teardown waits for killed orphans to be reaped (PID 1 here: every few s)."""

HEAD_NODE_TYPE = "ray.head.default"
_TEMP_PREFIX = "kaontest-"
_OWNER_FILE = "owner.json"
_RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class HarnessTimeout(TimeoutError):
    """Something a helper waits for did not happen in time; the message says what, and
    carries the log tail that usually says why."""


class HarnessTeardownError(RuntimeError):
    """Teardown could not remove everything (the message lists what is left)."""


# -- shared pieces --------------------------------------------------------------------------


def _skip_or_fail(reason: str) -> None:
    """Skip locally, fail under CI: a CI run that silently skips tests the executor
    depends on would hide a broken environment."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this is an error rather than a skip)")
    pytest.skip(reason)


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        _skip_or_fail("Ray is not installed (pip install 'kaon[ray]')")


def _ray_cli() -> str:
    """The ``ray`` script of the interpreter running the tests, so that every node runs
    the exact Ray and Python version of the drivers (Ray refuses a mismatch)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError(f"no `ray` script beside {sys.executable} or on PATH")
    return found


def _make_temp_root(token: str, namespaces: Sequence[str] = (), links: Sequence[str] = ()) -> Path:
    """``/tmp/kaontest-XXXXXXXX``: short, because Ray's Unix sockets live under it. Its
    ``owner.json`` names this process and what it is about to create, so that a later
    run can clean up after this one if it is SIGKILLed (`reap_orphans`)."""
    root = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir="/tmp"))
    me = psutil.Process()
    owner = {
        "pid": me.pid,
        "create_time": me.create_time(),
        "token": token,
        "namespaces": list(namespaces),
        "links": list(links),
    }
    (root / _OWNER_FILE).write_text(json.dumps(owner))
    return root


def _owner_alive(owner: Mapping[str, Any]) -> bool:
    try:
        started = psutil.Process(int(owner["pid"])).create_time()
        return abs(started - float(owner["create_time"])) < 0.01
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _netns_pids(ns: str) -> list[int]:
    ip_cmd = shutil.which("ip")
    if ip_cmd is None:
        return []
    done = subprocess.run(
        [ip_cmd, "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
    )
    return [int(p) for p in done.stdout.split()]


def _orphan_processes(token: str, root: Path, namespaces: Sequence[str]) -> list[psutil.Process]:
    found = _find_processes(token, str(root))
    for ns in namespaces:
        for pid in _netns_pids(ns):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
    return found


def reap_orphans() -> list[str]:
    """Remove what harness runs whose test process died without teardown (SIGKILL,
    ``os._exit``) left behind: their processes, namespaces, links and temp dirs. Only
    runs whose owner process is gone are touched, so parallel runs are safe. Called by
    every helper before it starts; returns the directories it cleaned."""
    cleaned: list[str] = []
    for root in sorted(Path("/tmp").glob(f"{_TEMP_PREFIX}*")):
        try:
            owner = json.loads((root / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or its owner is still writing it
        if _owner_alive(owner):
            continue
        namespaces = [str(ns) for ns in owner.get("namespaces", [])]
        ip_cmd = shutil.which("ip")
        token = str(owner.get("token", ""))
        _kill_all(
            functools.partial(_orphan_processes, token, root, namespaces),
            TEARDOWN_TIMEOUT_S,
            f"leftovers of {root}",
            wait_reaped=False,
        )
        if ip_cmd is not None:
            for args in [["netns", "del", ns] for ns in namespaces] + [
                ["link", "del", str(link)] for link in owner.get("links", [])
            ]:
                subprocess.run([ip_cmd, *args], capture_output=True, timeout=10, check=False)
        shutil.rmtree(root, ignore_errors=True)
        cleaned.append(str(root))
    if cleaned:
        print(f"ray_clusters: cleaned up after killed runs: {cleaned}", file=sys.stderr)
    return cleaned


def _free_port() -> int:
    """A TCP port free on all interfaces right now (the kernel's pick). Only for ``ray
    start``, which cannot take port 0 for its GCS; the race is retried by the caller."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _wait_until(
    predicate: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll until ``predicate`` returns something other than None/False; bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = ""
            if diagnostics is not None:
                with contextlib.suppress(Exception):
                    detail = "\n" + diagnostics()
            raise HarnessTimeout(f"{what}: not within {timeout_s:.0f} s{detail}")
        time.sleep(interval_s)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"[{path}: {e}]"
    return f"--- {path} (last {min(limit, len(data))} bytes) ---\n" + data[-limit:].decode(
        errors="replace"
    )


def _tails(paths: Sequence[Path]) -> str:
    return "\n".join(_tail(p) for p in paths if p.exists())


@contextlib.contextmanager
def _scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables in this process for a block, then restore them exactly. Used where
    Ray spawns processes from inside this process (``Cluster``), which only inherit."""
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


def _child_env(token: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process we start: ours plus the marker, without a
    RAY_ADDRESS that would point a node at someone else's cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env[MARKER_ENV] = token
    if extra:
        env.update(extra)
    return env


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not dlopen


def _fate_share() -> None:
    """preexec_fn: SIGKILL this child when the thread that started it ends (the test
    process dying included), the mechanism Ray uses for its own processes."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _popen(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_fate_share,  # only a prctl call: safe after fork in a threaded process
        )


def _matches(proc: psutil.Process, token: str, path_marker: str | None) -> bool:
    try:
        if path_marker is not None and any(
            a.endswith(path_marker) or path_marker + os.sep in a for a in proc.cmdline()
        ):
            return True
        return bool(token) and proc.environ().get(MARKER_ENV) == token
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def _find_processes(
    token: str, path_marker: str | None, extra_pids: Sequence[int] = ()
) -> list[psutil.Process]:
    """Live (not zombie) processes that carry our marker, plus ``extra_pids``, plus all
    their descendants (a child that scrubbed its environment is still found this way)."""
    me = os.getpid()
    roots: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        if proc.pid != me and _matches(proc, token, path_marker):
            roots[proc.pid] = proc
    for pid in extra_pids:
        with contextlib.suppress(psutil.Error):
            roots.setdefault(pid, psutil.Process(pid))
    found: dict[int, psutil.Process] = {}
    for proc in roots.values():
        found[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found[child.pid] = child
    found.pop(me, None)
    live: list[psutil.Process] = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    return live


def _kill_all(
    find: Callable[[], list[psutil.Process]],
    timeout_s: float,
    what: str,
    *,
    wait_reaped: bool = True,
) -> list[str]:
    """SIGKILL what ``find`` returns until it returns nothing (new processes can appear
    while we kill: a raylet starting a worker). With ``wait_reaped``, then wait until the
    pids are gone, zombies included, so that a later ``ps`` does not show them. Returns
    problems instead of raising, so that teardown goes on with the next step."""
    deadline = time.monotonic() + timeout_s
    killed: dict[int, psutil.Process] = {}
    while True:
        procs = find()  # live ones only: a zombie is dead already
        if not procs:
            break
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
            killed[proc.pid] = proc
        if time.monotonic() >= deadline:
            left = ", ".join(_describe(p) for p in find())
            return [f"{what}: still alive after {timeout_s:.0f} s: {left}"]
        time.sleep(0.02)
    if wait_reaped:
        # Reaps our own children; for the others, waits until their parent (PID 1 for
        # orphans) reaped them. Bounded apart: an init that never reaps only costs time,
        # and a zombie is dead, so it is not an error.
        remaining = list(killed.values())
        reap_deadline = min(deadline, time.monotonic() + REAP_WAIT_S)
        while remaining and time.monotonic() < reap_deadline:
            _, remaining = psutil.wait_procs(remaining, timeout=0.2)
    return []


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:100]}"
    except psutil.Error:
        return str(proc.pid)


def _finish(ok: bool, errors: list[str], what: str) -> None:
    """Raise teardown problems when the test passed; print them when it already failed,
    so they never hide the test's own exception."""
    if not errors:
        return
    message = f"{what} teardown: " + "; ".join(errors)
    if ok:
        raise HarnessTeardownError(message)
    print(message, file=sys.stderr)


def _check_main_thread(what: str) -> None:
    """``Cluster`` nodes install Ray's SIGTERM handler, which Python allows on the main
    thread only; Ray's own error for that comes late and leaves a half-made node."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            f"{what} must run on the main thread: Ray installs a SIGTERM handler for each "
            "node, and the node's processes are SIGKILLed when their starting thread ends"
        )


def _check_thread(owner: int, what: str) -> None:
    if threading.get_ident() != owner:
        raise RuntimeError(
            f"{what} must run on the thread that entered the context manager: the processes "
            "it starts are SIGKILLed when their starting thread ends (PR_SET_PDEATHSIG)"
        )


@dataclass(frozen=True)
class GcsNode:
    """One node as the GCS sees it (what a driver's ``ray.nodes()`` reports)."""

    node_id: str
    alive: bool
    ip: str
    is_head: bool
    temp_dir: str
    resources: Mapping[str, float]
    labels: Mapping[str, str]
    death_reason: str


class _Gcs:
    """A GCS client in the test process: reads the node table without being a driver.
    It talks gRPC, so pytest-socket's Python-level connect guard does not apply."""

    def __init__(self, address: str) -> None:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # Cython, no stub

        self.address = address
        self._client: Any = GcsClient(address=address)

    def nodes(self, timeout_s: float = 5.0) -> list[GcsNode]:
        infos = self._client.get_all_node_info(timeout=timeout_s)
        return [
            GcsNode(
                node_id=node_id.hex(),
                alive=info.state == 0,
                ip=info.node_manager_address,
                is_head=bool(info.is_head_node),
                temp_dir=info.temp_dir,
                resources=MappingProxyType(dict(info.resources_total)),
                labels=MappingProxyType(dict(info.labels)),
                death_reason=info.death_info.reason_message,
            )
            for node_id, info in infos.items()
        ]

    def node(self, node_id: str) -> GcsNode | None:
        return next((n for n in self.nodes() if n.node_id == node_id), None)

    def kv_get(self, key: str) -> bytes | None:
        value: bytes | None = self._client.internal_kv_get(key.encode(), None, timeout=5)
        return value

    def report_cluster_config(self, serialized: bytes) -> None:
        self._client.report_cluster_config(serialized)

    def wait_dead(self, node_id: str, timeout_s: float) -> float:
        """Seconds until the GCS reports the node DEAD (bounded)."""
        start = time.monotonic()

        def dead() -> bool:
            node = self.node(node_id)
            return node is not None and not node.alive

        _wait_until(dead, timeout_s, f"node {node_id[:12]} DEAD in the GCS at {self.address}")
        return time.monotonic() - start


def _frozen_mapping(value: Mapping[str, T]) -> Mapping[str, T]:
    return MappingProxyType(dict(value))


def _check_labels(labels: Mapping[str, str]) -> None:
    """Ray validates labels itself; this catches what would break ``--labels k=v,k2=v2``
    silently, and Ray's reserved prefix, before any process starts."""
    for key, value in labels.items():
        if key.startswith("ray.io/"):
            raise ValueError(f"label {key!r}: the ray.io/ prefix is Ray's own")
        if "," in key + value or "=" in key + value or not key:
            raise ValueError(f"label {key}={value!r}: no commas or '=' in labels")


def _check_resources(resources: Mapping[str, float]) -> None:
    reserved = _RESERVED_RESOURCES & set(resources)
    if reserved:
        raise ValueError(f"resources {sorted(reserved)} have fields of their own")


def _labels_arg(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


# -- 1. local_cluster -----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One Ray node: what it declares (GPUs may be fake: Ray only counts them)."""

    num_cpus: int = 1
    num_gpus: int = 0
    memory: int | None = None  # bytes; None: Ray reports the whole machine's memory
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    object_store_memory: int = OBJECT_STORE_BYTES

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        _check_resources(self.resources)
        _check_labels(self.labels)
        # Copies, read-only: a caller's dict changing later must not change the spec.
        object.__setattr__(self, "resources", _frozen_mapping(self.resources))
        object.__setattr__(self, "labels", _frozen_mapping(self.labels))

    def ray_params(self) -> dict[str, Any]:
        """Keyword arguments for ``Cluster.add_node`` / ``RayParams``."""
        params: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": dict(self.resources),
            "labels": dict(self.labels),
            "object_store_memory": self.object_store_memory,
        }
        if self.memory is not None:
            params["memory"] = self.memory
        return params


class LocalCluster:
    """Ray nodes as processes of this machine, managed from the test process, which is
    not a driver. Use `address` from another process."""

    def __init__(self, temp_root: Path, token: str, start_timeout_s: float) -> None:
        self.temp_dir = temp_root
        self._ray_temp = temp_root / "ray"
        self._token = token
        self._start_timeout_s = start_timeout_s
        # Each Node replaces this process's SIGTERM handler with one that drains and kills
        # it; restored at teardown, so that a SIGTERM later does not talk to a dead GCS.
        self._saved_sigterm = signal.getsignal(signal.SIGTERM)
        self._cluster: Any = None
        self._gcs: _Gcs | None = None
        self._nodes: dict[str, Any] = {}  # node id -> ray._private.node.Node, head first
        self._head_id = ""

    @property
    def address(self) -> str:
        """``ip:port`` of the GCS, for ``ray.init(address=...)`` in another process."""
        if self._cluster is None:
            raise RuntimeError("the cluster is not running")
        return str(self._cluster.address)

    @property
    def head_node_id(self) -> str:
        return self._head_id

    @property
    def dashboard_url(self) -> str | None:
        """``http://host:port`` of the Jobs/State HTTP APIs (``include_dashboard=True``)."""
        url = getattr(self._cluster, "webui_url", None) if self._cluster else None
        return f"http://{url}" if url else None

    def _env(self) -> dict[str, str]:
        # RAY_TMPDIR: Cluster writes and later deletes <RAY_TMPDIR>/ray/ray_current_cluster;
        # here that is our directory, not the machine-wide /tmp/ray.
        return {
            "RAY_TMPDIR": str(self.temp_dir),
            "RAY_USAGE_STATS_ENABLED": "0",
            MARKER_ENV: self._token,
        }

    def _start(self, head: NodeSpec, include_dashboard: bool) -> None:
        from ray.cluster_utils import Cluster

        params = head.ray_params() | {
            "temp_dir": str(self._ray_temp),
            "include_dashboard": include_dashboard,
            "dashboard_port": None,  # Ray then tries 8265 upwards instead of failing on it
            "dashboard_agent_listen_port": None,  # a free one, not the fixed 52365
            "_system_config": dict(FAST_HEALTH_CHECK),
        }
        with _scoped_environ(self._env()):
            self._cluster = Cluster(initialize_head=True, connect=False, head_node_args=params)
        node = self._cluster.head_node
        self._head_id = str(node.node_id)
        self._nodes[self._head_id] = node
        self._gcs = _Gcs(self.address)
        self._wait_alive(self._head_id, "head")

    def _wait_alive(self, node_id: str, what: str) -> None:
        gcs = self._require_gcs()

        def alive() -> bool:
            node = gcs.node(node_id)
            return node is not None and node.alive

        _wait_until(
            alive,
            self._start_timeout_s,
            f"{what} {node_id[:12]} ALIVE in the GCS",
            diagnostics=self._log_tails,
        )

    def _log_tails(self) -> str:
        logs = sorted(self._ray_temp.glob("session_*/logs/raylet*.out"))
        logs += sorted(self._ray_temp.glob("session_*/logs/gcs_server.out"))
        return _tails(logs[-3:])

    def _require_gcs(self) -> _Gcs:
        if self._gcs is None:
            raise RuntimeError("the cluster is not running")
        return self._gcs

    def add_node(self, spec: NodeSpec) -> str:
        """Start a node and wait until it is ALIVE in the GCS. Returns its node id (hex)."""
        _check_main_thread("LocalCluster.add_node")
        if self._cluster is None:
            raise RuntimeError("the cluster is not running")
        with _scoped_environ(self._env()):
            node = self._cluster.add_node(
                wait=False, temp_dir=str(self._ray_temp), **spec.ray_params()
            )
        node_id = str(node.node_id)
        self._nodes[node_id] = node
        self._wait_alive(node_id, "node")
        return node_id

    def remove_node(self, node_id: str, graceful: bool = True) -> None:
        """Stop a worker node. ``graceful``: SIGTERM, so the GCS marks it DEAD at once
        (an orderly shutdown). Otherwise SIGKILL of its raylet and agents (a crash): the
        GCS notices through its health check, about 1.0-1.5 s later (`wait_node_dead`)."""
        if node_id == self._head_id:
            raise ValueError("the head cannot be removed; leave the context instead")
        node = self._nodes.pop(node_id, None)
        if node is None:
            raise KeyError(f"no running node {node_id} in this cluster")
        self._cluster.remove_node(node, allow_graceful=graceful)

    def node_ids(self) -> list[str]:
        """The nodes this harness runs now, head first (removed ones are not listed)."""
        return list(self._nodes)

    def nodes(self) -> list[GcsNode]:
        """Every node the GCS knows, dead ones included (what ``ray.nodes()`` shows)."""
        return self._require_gcs().nodes()

    def wait_node_dead(self, node_id: str, timeout_s: float = 10.0) -> float:
        """Seconds until the GCS reports ``node_id`` DEAD; `HarnessTimeout` otherwise."""
        return self._require_gcs().wait_dead(node_id, timeout_s)

    def _close(self) -> list[str]:
        errors: list[str] = []
        self._gcs = None
        if self._cluster is not None:
            try:
                with _scoped_environ(self._env()):
                    self._cluster.shutdown()
            except Exception as e:  # the sweep below still kills everything
                errors.append(f"Cluster.shutdown: {type(e).__name__}: {e}")
            self._cluster = None
        self._nodes.clear()
        if self._saved_sigterm is not None:
            signal.signal(signal.SIGTERM, self._saved_sigterm)
        # Workers, agents and anything they started that outlived their raylet.
        errors += _kill_all(
            lambda: _find_processes(self._token, str(self.temp_dir)),
            TEARDOWN_TIMEOUT_S,
            "local cluster processes",
        )
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.temp_dir.exists():
            errors.append(f"could not remove {self.temp_dir}")
        return errors


@contextlib.contextmanager
def local_cluster(
    nodes: Sequence[NodeSpec],
    head: NodeSpec | None = None,
    *,
    include_dashboard: bool = False,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[LocalCluster]:
    """A Ray cluster of several nodes on this machine: the head (0 CPUs unless ``head``
    says otherwise) and one node per spec, all ALIVE in the GCS when the block starts.
    Everything is killed and removed when the block ends, whatever happened in it.
    ``include_dashboard``: the dashboard UI and its HTTP APIs (Jobs, State); they cost a
    second or more of start-up, so only when a test uses them."""
    _require_ray()
    _check_main_thread("local_cluster")
    reap_orphans()
    token = secrets.token_hex(8)
    cluster = LocalCluster(_make_temp_root(token), token, start_timeout_s)
    ok = False
    try:
        cluster._start(head or NodeSpec(num_cpus=0), include_dashboard)
        for spec in nodes:
            cluster.add_node(spec)
        yield cluster
        ok = True
    finally:
        _finish(ok, cluster._close(), "local_cluster")


# -- 2. autoscaling_cluster -----------------------------------------------------------------


@dataclass(frozen=True)
class NodeTypeSpec:
    """A worker node type of the fake autoscaler: what each such node declares, and how
    many of them the autoscaler may keep."""

    num_cpus: int
    num_gpus: int = 0
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 1
    object_store_memory: int = OBJECT_STORE_BYTES

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError("need 0 <= min_workers <= max_workers")
        _check_resources(self.resources)
        _check_labels(self.labels)
        object.__setattr__(self, "resources", _frozen_mapping(self.resources))
        object.__setattr__(self, "labels", _frozen_mapping(self.labels))

    def config_resources(self) -> dict[str, float]:
        """The ``resources`` of the node type in the autoscaling config: the provider
        pops CPU, GPU and object_store_memory and declares the rest as custom."""
        resources: dict[str, float] = {"CPU": self.num_cpus}
        if self.num_gpus:
            resources["GPU"] = self.num_gpus
        resources.update(self.resources)
        resources["object_store_memory"] = self.object_store_memory
        return resources


def autoscaling_config(
    node_types: Mapping[str, NodeTypeSpec],
    idle_timeout_s: float,
    max_workers: int,
    gcs_address: str,
    cluster_name: str,
) -> dict[str, Any]:
    """The complete cluster config of the fake multi-node provider: every key of Ray's
    own (missing) ``fake_multi_node/example.yaml``, so that neither the v1 monitor nor a
    ``fillout_defaults`` needs that file."""
    types: dict[str, Any] = {
        HEAD_NODE_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    }
    for name, spec in node_types.items():
        if name == HEAD_NODE_TYPE:
            raise ValueError(f"{HEAD_NODE_TYPE} is the head's node type")
        entry: dict[str, Any] = {
            "resources": spec.config_resources(),
            "node_config": {},
            "min_workers": spec.min_workers,
            "max_workers": spec.max_workers,
        }
        if spec.labels:
            entry["labels"] = dict(spec.labels)
        types[name] = entry
    return {
        "cluster_name": cluster_name,
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,  # fractions are allowed
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
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
    """A head whose autoscaler (v1, fake provider) adds and removes worker nodes on this
    machine. Drive it from a driver process with ``ray.autoscaler.sdk.request_resources``
    or with pending tasks/actors/placement groups."""

    def __init__(
        self,
        temp_root: Path,
        token: str,
        node_types: Mapping[str, NodeTypeSpec],
        idle_timeout_s: float,
        max_workers: int,
    ) -> None:
        self.temp_dir = temp_root
        self.node_types: Mapping[str, NodeTypeSpec] = MappingProxyType(dict(node_types))
        self.idle_timeout_s = idle_timeout_s
        self.max_workers = max_workers
        self.config_path = temp_root / "autoscaling.json"
        self.config: Mapping[str, Any] = MappingProxyType({})
        self._ray_temp = temp_root / "ray"
        self._token = token
        self._address = ""
        self._gcs: _Gcs | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = temp_root / "ray-start.log"

    @property
    def address(self) -> str:
        """``ip:port`` of the GCS, for ``ray.init(address=...)`` in another process."""
        if not self._address:
            raise RuntimeError("the head is not running")
        return self._address

    @property
    def logs_dir(self) -> Path:
        """The head's Ray logs (``monitor.log``/``monitor.err`` say what the autoscaler did)."""
        return self._ray_temp / "session_latest" / "logs"

    def _start(self, start_timeout_s: float, publish_cluster_config: bool) -> None:
        import ray._private.services as services

        ip = services.get_node_ip_address()  # type: ignore[no-untyped-call]
        attempts = 3
        for attempt in range(1, attempts + 1):
            port, dashboard_port, client_port = _free_port(), _free_port(), _free_port()
            self._address = f"{ip}:{port}"
            config = autoscaling_config(
                self.node_types,
                self.idle_timeout_s,
                self.max_workers,
                self._address,
                f"kaontest-{self._token}",
            )
            self.config_path.write_text(json.dumps(config, indent=2))
            self.config = MappingProxyType(config)
            argv = [
                _ray_cli(), "start", "--head", "--block",
                f"--port={port}",
                f"--node-ip-address={ip}",
                "--num-cpus=0", "--num-gpus=0",
                f"--autoscaling-config={self.config_path}",
                f"--temp-dir={self._ray_temp}",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--include-dashboard=false",
                f"--dashboard-port={dashboard_port}",
                "--dashboard-agent-listen-port=0",
                f"--ray-client-server-port={client_port}",
                f"--system-config={json.dumps(dict(FAST_HEALTH_CHECK))}",
                "--disable-usage-stats",
            ]  # fmt: skip
            env = _child_env(
                self._token, {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
            )
            env.pop("RAY_enable_autoscaler_v2", None)  # v1, see the module docstring
            self._process = _popen(argv, env, self._log)
            try:
                self._wait_started(start_timeout_s)
                break
            except _StartFailed as e:
                _kill_all(self._find, TEARDOWN_TIMEOUT_S, "failed head")
                self._reap()
                shutil.rmtree(self._ray_temp, ignore_errors=True)
                # A probed port taken meanwhile is worth another try; anything else is not.
                if attempt == attempts or "port" not in str(e).lower():
                    raise RuntimeError(f"ray start --head failed (try {attempt}):\n{e}") from None
        self._gcs = _Gcs(self._address)
        # The monitor publishes load metrics first; "autoscaler_report" appears once the
        # autoscaler itself has run an update, i.e. once it acts on requests.
        _wait_until(
            lambda: "autoscaler_report" in (self.autoscaler_status() or {}),
            start_timeout_s,
            "the autoscaler's first report (is the monitor running?)",
            interval_s=0.2,
            diagnostics=self._diagnostics,
        )
        if publish_cluster_config:
            self._require_gcs().report_cluster_config(self._cluster_config_proto())

    def _wait_started(self, timeout_s: float) -> None:
        """``ray start --block`` writes the address file once the head is up."""
        address_file = self._ray_temp / "ray_current_cluster"
        deadline = time.monotonic() + timeout_s
        while not address_file.exists():
            process = self._process
            if process is not None and process.poll() is not None:
                raise _StartFailed(_tail(self._log))
            if time.monotonic() >= deadline:
                raise HarnessTimeout(f"ray start --head: not up within {timeout_s:.0f} s\n"
                                     + _tail(self._log))  # fmt: skip
            time.sleep(0.05)

    def _cluster_config_proto(self) -> bytes:
        from ray.core.generated import autoscaler_pb2

        config = autoscaler_pb2.ClusterConfig()  # type: ignore[attr-defined]  # protobuf
        for name, spec in self.node_types.items():
            group = config.node_group_configs.add()
            group.name = name
            group.min_count = spec.min_workers
            group.max_count = spec.max_workers
            for key, value in spec.config_resources().items():
                group.resources[key] = int(value)
        serialized: bytes = config.SerializeToString()
        return serialized

    def max_resources(self) -> dict[str, float]:
        """The most of each resource the autoscaler could provide (Ray's own formula in
        ``get_max_resources_from_cluster_config``: per type, max_workers x amount)."""
        total: dict[str, float] = {}
        for spec in self.node_types.values():
            for key, value in spec.config_resources().items():
                total[key] = total.get(key, 0) + value * spec.max_workers
        return total

    def _diagnostics(self) -> str:
        return _tails([self._log, self.logs_dir / "monitor.err", self.logs_dir / "monitor.log"])

    def _require_gcs(self) -> _Gcs:
        if self._gcs is None:
            raise RuntimeError("the head is not running")
        return self._gcs

    def nodes(self) -> list[GcsNode]:
        """Every node the GCS knows, dead ones included."""
        return self._require_gcs().nodes()

    def worker_node_ids(self) -> list[str]:
        """The alive worker nodes (the autoscaler's), sorted."""
        return sorted(n.node_id for n in self.nodes() if n.alive and not n.is_head)

    def wait_for_workers(self, count: int, timeout_s: float = 60.0) -> list[str]:
        """Wait until exactly ``count`` worker nodes are alive; returns their ids."""

        def exactly() -> list[str] | None:
            ids = self.worker_node_ids()
            return ids if len(ids) == count else None

        if count == 0:
            _wait_until(
                lambda: not self.worker_node_ids(),
                timeout_s,
                "no worker node alive",
                interval_s=0.1,
                diagnostics=self._diagnostics,
            )
            return []
        return _wait_until(
            exactly,
            timeout_s,
            f"{count} worker node(s) alive",
            interval_s=0.1,
            diagnostics=self._diagnostics,
        )

    def autoscaler_status(self) -> dict[str, Any] | None:
        """The v1 monitor's last status report (``__autoscaling_status`` in the GCS KV)."""
        raw = self._require_gcs().kv_get("__autoscaling_status")
        return None if raw is None else dict(json.loads(raw))

    def _find(self) -> list[psutil.Process]:
        extra = [self._process.pid] if self._process and self._process.poll() is None else []
        return _find_processes(self._token, str(self.temp_dir), extra)

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            self._process = None

    def _close(self) -> list[str]:
        self._gcs = None
        # The head's processes, the monitor, and the fake worker nodes the monitor started
        # (children of the monitor, same temp dir, same marker).
        errors = _kill_all(self._find, TEARDOWN_TIMEOUT_S, "autoscaling cluster processes")
        self._reap()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.temp_dir.exists():
            errors.append(f"could not remove {self.temp_dir}")
        return errors


class _StartFailed(Exception):
    """``ray start`` exited before the node was up (its log is the message)."""


@contextlib.contextmanager
def autoscaling_cluster(
    node_types: Mapping[str, NodeTypeSpec],
    idle_timeout_s: float,
    max_workers: int,
    *,
    publish_cluster_config: bool = False,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[AutoscalingHead]:
    """A 0-CPU head whose v1 autoscaler launches fake worker nodes of ``node_types`` on
    this machine when drivers ask (``request_resources`` or pending work), and removes
    them after ``idle_timeout_s`` idle (a few seconds keeps tests short). The block starts
    when the autoscaler has reported once. ``publish_cluster_config``: also report the
    node types to the GCS, as platforms that publish a ``ClusterConfig`` do (see the
    module docstring)."""
    _require_ray()
    if not node_types:
        raise ValueError("at least one worker node type")
    reap_orphans()
    token = secrets.token_hex(8)
    head = AutoscalingHead(_make_temp_root(token), token, node_types, idle_timeout_s, max_workers)
    ok = False
    try:
        head._start(start_timeout_s, publish_cluster_config)
        yield head
        ok = True
    finally:
        _finish(ok, head._close(), "autoscaling_cluster")


# -- 3. netns_hosts -------------------------------------------------------------------------


def _namespace_name(token: str, i: int) -> str:
    return f"kaontest-{token[:4]}-h{i}"


def _veth_name(token: str, i: int) -> str:
    return f"kaontest-{token[:4]}{i:02d}"  # 15 characters, the limit for an interface


def _bridge_name(token: str) -> str:
    return f"kaontest-{token[:4]}br"


@dataclass(frozen=True)
class HostRayNode:
    """A Ray node started on a host by `Hosts.ray_head` or `Hosts.ray_worker`."""

    host: int
    node_id: str
    ip: str
    temp_dir: Path
    gcs_address: str  # the head's ``ip:port`` (for a head: its own)


class Hosts:
    """Network namespaces as machines. Host ``i`` (0-based) is `ip` ``(i)``; the root
    namespace, where the control plane runs, is `root_ip`."""

    def __init__(self, count: int, token: str, temp_root: Path) -> None:
        self.count = count
        self.temp_dir = temp_root
        self._token = token
        self._owner = threading.get_ident()
        self._ip_cmd = shutil.which("ip") or "ip"
        self.subnet = ""
        self._prefix = ""
        self._namespaces: list[str] = []  # created ones only
        self._links: list[str] = []  # created root-side links (veths, then the bridge last)
        self._bridge = ""
        self._popens: dict[int, list[subprocess.Popen[bytes]]] = {}
        self._gcs: dict[str, _Gcs] = {}
        self._counter = 0

    # --- names and addresses
    @property
    def root_ip(self) -> str:
        """The root namespace's address on the hosts' network (the bridge)."""
        return f"{self._prefix}.1"

    def ip(self, i: int) -> str:
        self._check_index(i)
        return f"{self._prefix}.{i + 2}"

    def namespace(self, i: int) -> str:
        self._check_index(i)
        return _namespace_name(self._token, i)

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.count:
            raise IndexError(f"host {i}: there are {self.count} hosts")

    def new_temp_dir(self, name: str) -> Path:
        """A directory under this harness's temp dir, removed at teardown; processes whose
        command line names it are killed at teardown too (use it for a root-namespace node)."""
        path = self.temp_dir / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    # --- setup and teardown
    def _run_ip(self, *args: str) -> None:
        done = subprocess.run(
            [self._ip_cmd, *args], capture_output=True, text=True, timeout=20, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")

    def _pick_subnet(self) -> None:
        used = subprocess.run(
            [self._ip_cmd, "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        used += subprocess.run(
            [self._ip_cmd, "-4", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        rng = secrets.SystemRandom()
        for _ in range(100):
            prefix = f"10.{rng.randint(231, 250)}.{rng.randint(0, 255)}"
            if f"{prefix}." not in used:
                self._prefix = prefix
                self.subnet = f"{prefix}.0/24"
                return
        raise RuntimeError("no free 10.231-250.x.0/24 subnet found")

    def _setup(self) -> None:
        self._pick_subnet()
        self._bridge = _bridge_name(self._token)
        self._run_ip("link", "add", self._bridge, "type", "bridge")
        self._links.append(self._bridge)
        self._run_ip("addr", "add", f"{self.root_ip}/24", "dev", self._bridge)
        self._run_ip("link", "set", self._bridge, "up")
        for i in range(self.count):
            ns, veth = self.namespace(i), _veth_name(self._token, i)
            self._run_ip("netns", "add", ns)
            self._namespaces.append(ns)
            self._run_ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._links.insert(0, veth)
            self._run_ip("link", "set", veth, "master", self._bridge)
            self._run_ip("link", "set", veth, "up")
            self._run_ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            self._run_ip("-n", ns, "link", "set", "eth0", "up")
            self._run_ip("-n", ns, "link", "set", "lo", "up")  # Ray needs 127.0.0.1

    def _link_exists(self, link: str) -> bool:
        done = subprocess.run(
            [self._ip_cmd, "link", "show", link], capture_output=True, timeout=10, check=False
        )
        return done.returncode == 0

    def _processes_in(self, namespaces: Sequence[str]) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for ns in namespaces:
            for pid in _netns_pids(ns):
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
        return procs

    def _reap(self, hosts: Sequence[int]) -> None:
        for i in hosts:
            for popen in self._popens.pop(i, []):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=5)

    def _close(self) -> list[str]:
        errors: list[str] = []
        self._gcs.clear()
        namespaces = list(self._namespaces)

        def everything() -> list[psutil.Process]:
            # In the namespaces, plus root-namespace processes using our temp dir
            # (a joined control-plane node) or carrying our marker.
            found = {p.pid: p for p in self._processes_in(namespaces)}
            for p in _find_processes(self._token, str(self.temp_dir)):
                found.setdefault(p.pid, p)
            return list(found.values())

        errors += _kill_all(everything, TEARDOWN_TIMEOUT_S, "host processes")
        self._reap(list(self._popens))
        for ns in namespaces:
            try:
                self._run_ip("netns", "del", ns)
                self._namespaces.remove(ns)
            except Exception as e:
                errors.append(str(e))
        for link in list(self._links):
            # Deleting a namespace deletes its veth pair, asynchronously: a link may
            # vanish between a check and the `ip link del`, so only a survivor is an error.
            with contextlib.suppress(RuntimeError):
                self._run_ip("link", "del", link)
        try:
            _wait_until(
                lambda: not any(self._link_exists(link) for link in self._links),
                10.0,
                f"links {self._links} gone",
            )
            self._links.clear()
        except HarnessTimeout as e:
            errors.append(str(e))
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.temp_dir.exists():
            errors.append(f"could not remove {self.temp_dir}")
        return errors

    # --- processes
    def spawn(
        self,
        i: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Run ``argv`` on host ``i`` (``ip netns exec``), output appended to ``log_path``
        (default: a file under `temp_dir`). The environment is this process's plus ``env``,
        with the harness marker. The process dies with `kill_host` and at teardown."""
        _check_thread(self._owner, "Hosts.spawn")
        ns = self.namespace(i)
        if log_path is None:
            self._counter += 1
            log_path = self.temp_dir / f"h{i}-spawn{self._counter}.log"
        popen = _popen(
            [self._ip_cmd, "netns", "exec", ns, *argv], _child_env(self._token, env), log_path
        )
        self._popens.setdefault(i, []).append(popen)
        return popen

    def _gcs_for(self, address: str) -> _Gcs:
        if address not in self._gcs:
            self._gcs[address] = _Gcs(address)
        return self._gcs[address]

    def nodes(self, gcs_address: str) -> list[GcsNode]:
        """Every node the GCS at ``gcs_address`` knows, dead ones included."""
        return self._gcs_for(gcs_address).nodes()

    def wait_node_dead(self, gcs_address: str, node_id: str, timeout_s: float = 10.0) -> float:
        """Seconds until that GCS reports ``node_id`` DEAD; `HarnessTimeout` otherwise."""
        return self._gcs_for(gcs_address).wait_dead(node_id, timeout_s)

    def _start_node(
        self,
        i: int,
        role: str,
        options: list[str],
        gcs_address: str,
        timeout_s: float,
    ) -> HostRayNode:
        self._counter += 1
        temp = self.temp_dir / f"h{i}-{role}{self._counter}"
        log = self.temp_dir / f"h{i}-{role}{self._counter}.log"
        argv = [
            _ray_cli(), "start", "--block",
            f"--node-ip-address={self.ip(i)}",
            f"--temp-dir={temp}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            *options,
        ]  # fmt: skip
        popen = self.spawn(i, argv, log_path=log)
        deadline = time.monotonic() + timeout_s
        address_file = temp / "ray_current_cluster"  # written once the node is up

        def started() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(f"ray start ({role}) on host {i} exited:\n{_tail(log)}")
            return address_file.exists()

        _wait_until(started, timeout_s, f"ray start ({role}) on host {i}",
                    diagnostics=lambda: _tail(log))  # fmt: skip
        gcs = self._gcs_for(gcs_address)

        def registered() -> str | None:
            for node in gcs.nodes():
                if node.alive and node.temp_dir == str(temp):
                    return node.node_id
            return None

        remaining = max(1.0, deadline - time.monotonic())
        node_id = _wait_until(
            registered,
            remaining,
            f"{role} on host {i} ALIVE in the GCS at {gcs_address}",
            diagnostics=lambda: _tail(log),
        )
        return HostRayNode(i, node_id, self.ip(i), temp, gcs_address)

    def ray_head(
        self,
        i: int,
        port: int = 6379,
        num_cpus: int = 0,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        include_dashboard: bool = False,
        timeout_s: float = START_TIMEOUT_S,
    ) -> HostRayNode:
        """Start a Ray head on host ``i`` (fast node-death detection, `FAST_HEALTH_CHECK`),
        wait until it is ALIVE in its GCS. Its address is ``HostRayNode.gcs_address``.
        Ports are per namespace, so the defaults (6379, 8265, 10001) are free here; with
        ``include_dashboard`` the Jobs and State HTTP APIs listen on ``<ip>:8265``."""
        resources, labels = dict(resources or {}), dict(labels or {})
        _check_resources(resources)
        _check_labels(labels)
        options = [
            "--head",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--system-config={json.dumps(dict(FAST_HEALTH_CHECK))}",
            f"--include-dashboard={'true' if include_dashboard else 'false'}",
            "--dashboard-host=0.0.0.0",
        ]
        if resources:
            options.append(f"--resources={json.dumps(resources)}")
        if labels:
            options.append(f"--labels={_labels_arg(labels)}")
        return self._start_node(i, "head", options, f"{self.ip(i)}:{port}", timeout_s)

    def ray_worker(
        self,
        i: int,
        head_address: str,
        num_cpus: int = 1,
        num_gpus: int = 0,
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        timeout_s: float = START_TIMEOUT_S,
    ) -> HostRayNode:
        """Start a Ray worker node on host ``i`` joining ``head_address`` (``ip:port``),
        wait until it is ALIVE in the head's GCS."""
        resources, labels = dict(resources or {}), dict(labels or {})
        _check_resources(resources)
        _check_labels(labels)
        options = [
            f"--address={head_address}",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
        ]
        if resources:
            options.append(f"--resources={json.dumps(resources)}")
        if labels:
            options.append(f"--labels={_labels_arg(labels)}")
        return self._start_node(i, "worker", options, head_address, timeout_s)

    def kill_host(self, i: int) -> None:
        """SIGKILL every process in host ``i``'s namespace, the way a machine dies; returns
        as soon as all are dead (0.03-0.09 s). Its network stays, so peers get refused
        connections (a quick death) rather than silence. Start nodes on it again at will:
        they join as new nodes."""
        ns = self.namespace(i)
        # A head restarted there later is another cluster: no stale client for its address.
        for address in [a for a in self._gcs if a.rsplit(":", 1)[0] == self.ip(i)]:
            del self._gcs[address]
        errors = _kill_all(lambda: self._processes_in([ns]), 20.0, f"host {i}", wait_reaped=False)
        self._reap([i])
        if errors:
            raise HarnessTeardownError("; ".join(errors))


@contextlib.contextmanager
def netns_hosts(count: int) -> Iterator[Hosts]:
    """``count`` machines as network namespaces on a bridge with the root namespace. Skips
    (fails under CI=true) without root, without ``ip``, or where namespaces cannot be
    made. Everything is removed at the end: processes, namespaces, links, temp dirs."""
    _require_ray()
    if os.geteuid() != 0:
        _skip_or_fail("netns_hosts needs root (network namespaces)")
    if shutil.which("ip") is None:
        _skip_or_fail("netns_hosts needs the `ip` command (iproute2)")
    if not 1 <= count <= 100:
        raise ValueError("1 to 100 hosts")
    reap_orphans()
    token = secrets.token_hex(8)
    namespaces = [_namespace_name(token, i) for i in range(count)]
    links = [_veth_name(token, i) for i in range(count)] + [_bridge_name(token)]
    hosts = Hosts(count, token, _make_temp_root(token, namespaces, links))
    ok = False
    try:
        try:
            hosts._setup()
        except RuntimeError as e:
            if "Operation not permitted" in str(e):
                _skip_or_fail(f"netns_hosts: network namespaces are not permitted here ({e})")
            raise
        yield hosts
        ok = True
    finally:
        _finish(ok, hosts._close(), "netns_hosts")
