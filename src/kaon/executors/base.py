"""The executor interface: the only code that starts, watches and stops workers.

An executor knows its nodes (inventory), launches a gang of workers with per-worker
resources, reports each worker's state, returns its log, and stops it. The local executor
runs child processes on this machine; the Ray executor runs the same supervised processes
on the nodes of a Ray cluster, through an agent on each node. `Pools` puts every executor
of a control plane behind this one interface, so reconcilers talk only to it.

Optional capabilities are protocols of their own, asked with ``isinstance``:
`SupportsCapacityRequests` (an autoscaler can add nodes of the shapes asked for).

Every call must be idempotent, because the control plane is crash-only: after a restart
it repeats the step it was in the middle of. `launch` of a worker that already runs
returns the running worker's handle instead of starting it twice; `stop` of a worker
that already ended does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from kaon.core.nodes import GpuInfo


@dataclass(frozen=True)
class NodeInventory:
    """What a node offers. `id` is stable across restarts of the node and the server."""

    id: str
    name: str
    address: str
    cpu: float
    memory: int
    gpus: tuple[GpuInfo, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True  # False: it exists but cannot take work now (`message` says why)
    message: str = ""


@dataclass(frozen=True)
class WorkerLaunch:
    """One worker of a gang: where it runs, with what, as whom."""

    index: int
    node_id: str
    cpu: float
    memory: int
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class GangLaunch:
    """Everything needed to start (or re-adopt) all workers of one attempt of a job."""

    job_id: str
    attempt: int
    command: tuple[str, ...]
    env: dict[str, str]
    workers: tuple[WorkerLaunch, ...]
    snapshot: str | None = None  # path of a tar.gz to unpack as the working directory
    stop_grace_s: float = 10.0
    snapshot_sha256: str | None = None  # the same code by its hash, for remote nodes to fetch
    # The rendezvous of a gang that spans nodes, chosen on worker 0's node by executors
    # that know other machines; None lets a one-machine executor pick it.
    master: tuple[str, int] | None = None
    # Artifact versions the workers find in their working folder: (relative path there,
    # the node's verified read-only copy). The local executor links them in.
    inputs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WorkerState:
    """A worker as observed. `exit_code` is None while it runs (or when it was lost)."""

    handle: str
    alive: bool
    pid: int | None = None
    exit_code: int | None = None
    reason: str | None = None  # why it ended, in words a user can act on
    port: int | None = None  # KAON_PORT: a free port on its node kept for this worker
    # It did not fail: its node died or left the pool, and the worker with it. The job is
    # queued again without spending a retry, and resumes from its last checkpoint.
    lost: bool = False


@runtime_checkable
class Executor(Protocol):
    name: str

    def inventory(self) -> list[NodeInventory]:
        """The nodes this executor can run workers on."""
        ...

    def launch(self, gang: GangLaunch) -> list[WorkerState]:
        """Start every worker of the gang (or adopt those already started)."""
        ...

    def status(self, handles: list[str]) -> list[WorkerState]:
        """The current state of each worker, in the order given."""
        ...

    def stop(self, handles: list[str], grace_s: float) -> None:
        """Ask workers to stop: SIGTERM now, SIGKILL after `grace_s`. Does not wait."""
        ...

    def checkpoint_dir(self, job_id: str) -> Path:
        """The control plane's copy of a job's checkpoints: the local workers'
        KAON_CHECKPOINT_DIR itself; remote nodes mirror theirs into it."""
        ...

    def logs(self, handle: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Up to `limit` bytes of the worker's log, from byte `offset`."""
        ...

    def set_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) when a worker may have changed state."""
        ...

    def close(self) -> None:
        """Let go of what the executor holds in this process (connections, helper
        processes). Workers keep running: the next control plane adopts them."""
        ...


@runtime_checkable
class SupportsCapacityRequests(Protocol):
    """An executor whose pool can grow: an autoscaler adds nodes for the shapes asked for
    and removes idle ones after its own idle timeout."""

    elastic: bool  # an autoscaler is there now (a Ray cluster may have none)

    def request_capacity(self, bundles: list[dict[str, float]]) -> None:
        """Ask for enough nodes that all `bundles` (Ray resource dicts: ``CPU``, ``GPU``,
        ``memory``) fit at once, running work included. Each call replaces the last; an
        empty list lets idle nodes go."""
        ...
