"""Small builders for pool states, so each test reads as its table row."""

from __future__ import annotations

from kaon.scheduler import NodeCapacity, PoolState, Quota, WorkerPlacement, Workload


def node(name: str, gpus: int = 8, free: int | None = None, cpu: float = 64.0) -> NodeCapacity:
    """A node with `gpus` GPUs; the last `free` indices are free, the first ones busy."""
    free = gpus if free is None else free
    return NodeCapacity(
        id=name,
        cpu=cpu,
        memory=1 << 40,
        gpus=tuple(range(gpus)),
        cpu_free=cpu,
        memory_free=1 << 40,
        gpus_free=tuple(range(gpus - free, gpus)),
    )


def job(
    name: str,
    gpus: int = 1,
    workers: int = 1,
    ws: str = "a",
    priority: int = 0,
    submitted: float = 0.0,
    attained: float = 0.0,
    on: tuple[tuple[str, tuple[int, ...]], ...] = (),
    started: float | None = None,
    walltime: float | None = None,
) -> Workload:
    """A pending job, or a running one when `on` names its (node, GPU indices) per worker."""
    return Workload(
        id=name,
        workspace=ws,
        workers=workers,
        cpu=0.0,
        memory=0,
        gpus=gpus,
        submitted_at=submitted,
        priority=priority,
        attained_gpu_s=attained,
        placement=tuple(WorkerPlacement(n, g) for n, g in on),
        started_at=started,
        walltime_s=walltime,
    )


def snap(
    nodes: list[NodeCapacity],
    pending: list[Workload],
    running: list[Workload] | None = None,
    quotas: dict[str, Quota] | None = None,
    now: float = 0.0,
) -> PoolState:
    return PoolState(
        now=now,
        nodes=tuple(nodes),
        pending=tuple(pending),
        running=tuple(running or ()),
        quotas=quotas or {},
    )


def nodes_of(decisions_placement: tuple[WorkerPlacement, ...]) -> list[str]:
    return sorted({wp.node_id for wp in decisions_placement})
