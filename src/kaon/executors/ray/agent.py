"""The node agent: one detached Ray actor per node, the Ray executor's hands there.

It runs no user code of its own: it starts each worker under the same supervisor as the
local executor (`kaon.executors._shim`: process group, log, memory limit, true exit status
on disk), with the local executor's own code, on its node. The run folders on the node's
disk are its whole memory, so the agent is crash-only like the rest of Kaon: if it dies,
Ray starts it again (``max_restarts=-1``) and it picks the workers up from disk; if the
control plane or its bridge dies, the agent and the workers carry on and are adopted.

Launching through a long-lived agent instead of an actor per worker is what makes a start
cost milliseconds: a new Ray actor is a new Python process, about 0.5 s here, while the
agent starts the supervisor in about 5 ms (measured in docs/pool.md).

What crosses the network: the job's code is fetched from the control plane by its sha256
and cached on the node; the job's checkpoint folder is pulled before an attempt starts
and pushed back every few seconds and once more when a worker ends, so a job resumes on
another node after a preemption or a lost node. A worker is reported ended only after
that last push, so the control plane never restarts a job before its last checkpoint is
safe.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from kaon._version import __version__
from kaon.core.tls import ENV_CA_PEM
from kaon.executors.base import NodeInventory, WorkerState
from kaon.executors.gpus import discover_gpus
from kaon.executors.local import LocalExecutor, read_json
from kaon.executors.node_sync import CheckpointMirror, TrustStore, fetch_code
from kaon.executors.ray import wire

logger = logging.getLogger("kaon.ray.agent")

WATCH_S = 0.05  # how often ended workers are looked for
PUSH_EVERY_S = 2.0  # how often running jobs' checkpoints are pushed
FINAL_PUSH_TRIES = 3
FINALIZED = "finalized"  # marker file in a worker's folder: its last push is done
PULLED = "checkpoints-pulled"  # marker in an attempt's folder: its checkpoints are here
CREDENTIALS = "agent.json"  # in an attempt's folder: its api url and token, 0600


@functools.cache
def code_fingerprint() -> str:
    """A digest of the code this process loaded, so a bridge replaces an agent started
    from other code (an upgrade; a control plane and a node on different installs) even
    when the version string did not change. Taken once, when first asked (the agent asks
    as it starts), so it describes the code in memory, not files changed since."""
    import hashlib

    from kaon.executors import _shim, _usage, local, node_sync

    digest = hashlib.sha256(__version__.encode())
    for module in (_shim, _usage, local, node_sync, wire, sys.modules[__name__]):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


def placement_group_name(job_id: str, attempt: int, node_id: str) -> str:
    """The Ray placement group that reserves one attempt's workers on one node."""
    return f"kaon-{job_id}-{attempt}-{node_id}"


class NodeAgent:
    """Starts, watches and stops workers on one node. Every method is idempotent."""

    def __init__(self, pool: str, node_id: str, address: str, node_dir: str) -> None:
        self.pool = pool
        self.node_id = node_id
        self.address = address
        self.dir = Path(os.path.expanduser(node_dir)) / pool / node_id
        self.cache = self.dir / "cache"
        self.raylet_pid = os.getppid()  # a Ray worker's parent is its node's raylet
        code_fingerprint()  # of the code loaded now
        node = NodeInventory(id=node_id, name=node_id, address=address, cpu=0.0, memory=0)
        self.local = LocalExecutor(
            self.dir / "runs",
            self.dir / "checkpoints",
            node,
            detach=True,
            watch_pid=self.raylet_pid,
            host_env=_worker_base_env,
        )
        self.trust = TrustStore()  # the system's, and each control plane's certificate
        self.http = httpx.Client(
            timeout=httpx.Timeout(30.0, connect=5.0), verify=self.trust.context
        )
        self.mirror = CheckpointMirror(self.http)
        self.changed = threading.Event()
        self._wake = threading.Event()  # a supervisor ended: look now, not at the next tick
        self.local.set_listener(self._wake.set)
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str, str]] = {}  # running job -> (api_url, token)
        self._watched: set[str] = set(self._adopt())
        self._idle_since = time.monotonic()
        self._ended: list[str] = []  # finalized since the bridge last asked
        threading.Thread(target=self._watch, name="kaon-watch", daemon=True).start()
        threading.Thread(target=self._push_loop, name="kaon-push", daemon=True).start()

    # -- what the bridge asks --------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Who this agent is: the bridge checks the version, and reads the GPUs."""
        return {
            "node_id": self.node_id,
            "version": __version__,
            "code": code_fingerprint(),
            "python": sys.version.split()[0],
            "hostname": socket.gethostname(),
            "gpus": [g.model_dump() for g in discover_gpus()],
            "pid": os.getpid(),
        }

    def gang_port(self, job_id: str, attempt: int) -> int:
        """The rendezvous port of an attempt whose worker 0 runs here (kept on disk)."""
        return self.local.gang_port(job_id, attempt)

    def launch(self, gang_data: dict[str, Any]) -> list[dict[str, Any]]:
        """Start this node's workers of the gang (or adopt those already started)."""
        gang = wire.gang_from_wire(gang_data)
        gang = replace(gang, env={**self._interface_env, **gang.env})
        api_url, token = gang.env.get("KAON_API_URL", ""), gang.env.get("KAON_JOB_TOKEN", "")
        ca_pem = gang.env.get(ENV_CA_PEM)
        self.trust.add(ca_pem)
        if gang.snapshot_sha256:
            path = fetch_code(
                self.http, api_url, gang.job_id, token, gang.snapshot_sha256, self.cache
            )
            gang = replace(gang, snapshot=str(path))
        attempt_dir = self.local.runs_dir / gang.job_id / str(gang.attempt)
        pulled = attempt_dir / PULLED
        resumed = gang.env.get("KAON_RESTART_COUNT", "0") != "0"  # a first run has none
        if api_url and resumed and not pulled.exists():  # once per attempt: resume there
            self.mirror.pull(gang.job_id, token, api_url, self.local.checkpoint_dir(gang.job_id))
            attempt_dir.mkdir(parents=True, exist_ok=True)
            pulled.touch()
        with self._lock:
            self._jobs[gang.job_id] = (api_url, token)
        _keep_credentials(attempt_dir, api_url, token, ca_pem)
        states = self.local.launch_on(gang, {self.node_id})
        with self._lock:
            self._watched.update(st.handle for st in states)
            self._idle_since = time.monotonic()
        return [wire.state_to_wire(st) for st in states]

    def status(self, handles: list[str]) -> list[dict[str, Any]]:
        """As the local executor sees them, except that a worker whose last checkpoint
        push is not done yet still counts as alive."""
        states = self.local.status(handles)
        return [wire.state_to_wire(self._held(st)) for st in states]

    def stop(self, handles: list[str], grace_s: float) -> None:
        self.local.stop(handles, grace_s)

    def logs(self, handle: str, offset: int, limit: int) -> str:
        return wire.encode_bytes(self.local.logs(handle, offset, limit))

    def wait_changed(self, timeout_s: float) -> dict[str, Any]:
        """Return when a worker on this node ended (``changed``) or after `timeout_s`: the
        bridge keeps one such call open per node, so ends are seen at once. ``idle_s``:
        how long this node has had no Kaon worker (0 while it has one); an elastic pool's
        bridge lets an agent go after a while, since Ray counts a node with any actor on
        it as busy and its autoscaler would never remove it."""
        fired = self.changed.wait(timeout_s)
        self.changed.clear()
        with self._lock:
            busy = bool(self._watched)
            ended, self._ended = self._ended, []
        if busy:
            self._idle_since = time.monotonic()
        return {
            "changed": fired,
            "ended": [wire.state_to_wire(st) for st in self.local.status(ended)],
            "idle_s": 0.0 if busy else time.monotonic() - self._idle_since,
        }

    @functools.cached_property
    def _interface_env(self) -> dict[str, str]:
        return self._network_env()

    def _network_env(self) -> dict[str, str]:
        """Which interface collective libraries use: the one that holds this node's
        address. Left to themselves, gloo and NCCL pick the interface of the hostname,
        which on a machine with several networks may not reach the other nodes. A job's
        own setting wins."""
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.address == self.address for a in addresses):
                return {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name}
        return {}

    # -- ends and checkpoints --------------------------------------------------------------

    def _held(self, st: WorkerState) -> WorkerState:
        if st.alive or (self.local.runs_dir / st.handle / FINALIZED).exists():
            return st
        return replace(st, alive=True, exit_code=None, reason=None, lost=False)

    def _adopt(self) -> list[str]:
        """Handles of workers on disk whose end is not finalized yet (after a restart)."""
        runs = self.local.runs_dir
        if not runs.exists():
            return []
        out = []
        for wdir in runs.glob("*/*/*"):
            if (
                wdir.is_dir()
                and (wdir / "launch.json").exists()
                and not (wdir / FINALIZED).exists()
            ):
                out.append(str(wdir.relative_to(runs)))
                kept = self._kept(wdir.parent)
                if kept is not None:  # its checkpoints are pushed again, as before
                    self._jobs[wdir.parent.parent.name] = kept
        return out

    def _kept(self, attempt_dir: Path) -> tuple[str, str] | None:
        """An adopted attempt's address and token, its certificate trusted again."""
        data = read_json(attempt_dir / CREDENTIALS)
        if not data or not data.get("token"):
            return None
        self.trust.add(data.get("ca_pem"))
        return str(data.get("api_url", "")), str(data["token"])

    def _watch(self) -> None:
        while True:
            self._wake.wait(WATCH_S)
            self._wake.clear()
            with self._lock:
                watched = list(self._watched)
            for handle in watched:
                wdir = self.local.runs_dir / handle
                if (wdir / "exit.json").exists():
                    self._finalize(handle, wdir)

    def _finalize(self, handle: str, wdir: Path) -> None:
        """A worker ended: push its job's checkpoints a last time, then report it."""
        job_id, attempt, _ = handle.split("/")
        with self._lock:
            api_url, token = self._jobs.get(job_id) or self._kept(wdir.parent) or ("", "")
        folder = self.local.checkpoint_dir(job_id)
        if api_url and token and _has_files(folder):
            for _ in range(FINAL_PUSH_TRIES):
                try:
                    self.mirror.push(job_id, token, api_url, folder, final=True)
                    break
                except Exception as e:  # the control plane may be restarting: try again
                    logger.warning("last checkpoint push of %s failed: %s", job_id, e)
                    time.sleep(1.0)
        (wdir / FINALIZED).touch()
        with self._lock:
            self._watched.discard(handle)
            self._ended.append(handle)
            # Idle counts from the last worker's end, not from its launch: a worker that ran
            # longer than the linger would otherwise have its agent let go at once, while
            # the control plane still reads its log.
            self._idle_since = time.monotonic()
            done = not any(h.startswith(f"{job_id}/{attempt}/") for h in self._watched)
            if done and not any(h.startswith(f"{job_id}/") for h in self._watched):
                self._jobs.pop(job_id, None)
                self.mirror.forget(job_id)
        if done:
            self._release(job_id, int(attempt))
        self.changed.set()

    def _release(self, job_id: str, attempt: int) -> None:
        """Give Ray back what the attempt's workers held on this node."""
        with contextlib.suppress(Exception):
            import ray
            from ray.util import get_placement_group, remove_placement_group

            if ray.is_initialized():
                name = placement_group_name(job_id, attempt, self.node_id)
                remove_placement_group(get_placement_group(name))

    def _push_loop(self) -> None:
        while True:
            time.sleep(PUSH_EVERY_S)
            with self._lock:
                jobs = dict(self._jobs)
            for job_id, (api_url, token) in jobs.items():
                if not api_url:
                    continue
                try:
                    self.mirror.push(job_id, token, api_url, self.local.checkpoint_dir(job_id))
                except Exception as e:  # the next push tries again
                    logger.warning("checkpoint push of %s failed: %s", job_id, e)


def _keep_credentials(attempt_dir: Path, api_url: str, token: str, ca_pem: str | None) -> None:
    """The attempt's control-plane address and token, in a file only this agent's user
    reads: launch files hold no tokens, and an agent that restarts must still push the
    checkpoints of the workers it adopts."""
    attempt_dir.mkdir(parents=True, exist_ok=True)
    path = attempt_dir / CREDENTIALS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_url": api_url, "token": token, "ca_pem": ca_pem}, f)


def _has_files(folder: Path) -> bool:
    """Whether a checkpoint folder holds anything to push (most short jobs write none)."""
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def _worker_base_env() -> dict[str, str]:
    """The environment workers start from: the agent's, less what Ray set for the agent
    itself (a worker is not a Ray worker), with this node's Kaon Python first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        [bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]]
    )
    return env
