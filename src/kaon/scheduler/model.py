"""Inputs and outputs of the scheduling core. Plain frozen dataclasses: cheap to build for
10,000 jobs, hashable, and free of any database or HTTP type."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeCapacity:
    """A node's capacity and what is free on it right now."""

    id: str
    cpu: float
    memory: int
    gpus: tuple[int, ...]  # indices of all GPUs
    cpu_free: float
    memory_free: int
    gpus_free: tuple[int, ...]  # indices of free GPUs
    gpu_type: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    schedulable: bool = True
    # Nodes of one domain reach each other over the network (one machine, one Ray
    # cluster); a gang never spans two domains, since its workers talk to rank 0.
    domain: str = ""


@dataclass(frozen=True)
class WorkerPlacement:
    node_id: str
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Workload:
    """A job (or a deployment's replica set) as the scheduler sees it.

    Running workloads carry their `placement`; pending ones have none.
    """

    id: str
    workspace: str
    workers: int
    cpu: float  # per worker
    memory: int  # per worker, bytes
    gpus: int  # per worker
    submitted_at: float  # seconds, any epoch, same clock as PoolState.now
    priority: int = 0
    gpu_type: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    attained_gpu_s: float = 0.0  # service received so far (GPU-seconds; CPU-seconds if no GPU)
    placement: tuple[WorkerPlacement, ...] = ()
    preemptible: bool = True
    not_before: float | None = None  # do not place before this time (retry back-off)
    # When the current run started: a job is not preempted again before it has run
    # `min_run_s`, which bounds thrashing. None (unknown) lets any rule preempt it.
    started_at: float | None = None
    # When `attained_gpu_s` was measured. None means "at PoolState.now" (what the control
    # plane sends); a running workload with an older stamp accrues total_gpus GPU-seconds
    # per second since then, so a simulator can reuse one object across passes.
    attained_at: float | None = None
    # The user's run-time estimate (a walltime limit), only for the policies that use one
    # (`easy`, and the `srtf` oracle, which is given the true duration). Kaon ignores it.
    walltime_s: float | None = None

    @property
    def running(self) -> bool:
        return bool(self.placement)

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.workers

    def attained(self, now: float) -> float:
        """Service received up to `now`, in GPU-seconds (CPU-seconds for CPU-only work)."""
        if self.attained_at is None or not self.placement or now <= self.attained_at:
            return self.attained_gpu_s
        rate = self.total_gpus or self.cpu * self.workers
        return self.attained_gpu_s + rate * (now - self.attained_at)


@dataclass(frozen=True)
class Quota:
    """A workspace's nominal share and how much idle capacity it may borrow beyond it."""

    gpus: float = float("inf")
    cpu: float = float("inf")
    memory: float = float("inf")
    borrow_gpus: float = float("inf")
    borrow_cpu: float = float("inf")
    borrow_memory: float = float("inf")
    # Workspaces in one cohort lend each other their idle nominal capacity.
    cohort: str = "default"


@dataclass(frozen=True)
class PoolState:
    now: float
    nodes: tuple[NodeCapacity, ...]
    pending: tuple[Workload, ...]
    running: tuple[Workload, ...] = ()
    quotas: dict[str, Quota] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    workload_id: str
    workers: tuple[WorkerPlacement, ...]


@dataclass(frozen=True)
class Preemption:
    workload_id: str
    reason: str


@dataclass(frozen=True)
class Decisions:
    placements: tuple[Placement, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
    waiting: dict[str, str] = field(default_factory=dict)  # workload id -> why it waits
    # Nodes held back for a waiting gang so that backfilled jobs cannot take them.
    reserved: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Waiting workloads that only lack capacity (their quota admits them, no back-off):
    # more nodes would let them start. What an elastic pool's autoscaler is asked for.
    short_of_capacity: tuple[str, ...] = ()
