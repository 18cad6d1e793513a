"""Each node's GPUs now, for the nodes listing: who holds each and what NVML measured.

Holders come from one query (the active workers holding GPUs, with their job and
workspace); utilisation and memory come from the readings the history loop already keeps
(`history.UtilReadings`), so answering costs no scan of the metrics table. What the
caller may see is decided by `gpu_use` (pure): a job of another workspace holds its GPU
without a name, unless the caller is the instance's admin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.nodes import GpuUse, NodeView
from kaon.server.db.models import Job, Worker, Workspace
from kaon.server.security.principal import Principal
from kaon.server.services.history import UtilReadings


@dataclass(frozen=True, slots=True)
class Holder:
    """An active worker holding GPUs of one node."""

    node_id: str
    workspace_id: str
    workspace: str
    job_id: str
    job_name: str | None
    worker: int
    gpus: tuple[int, ...]


def gpu_use(
    node: NodeView,
    holders: Sequence[Holder],
    util: Mapping[tuple[str, int], float],
    memory: Mapping[tuple[str, int], float],
    caller: Principal,
) -> list[GpuUse]:
    """The node's GPUs by index: each one's holder (named if the caller sees its
    workspace) and its worker's latest measured utilisation and memory (None: not
    measured)."""
    seen = set(caller.workspaces.values())
    by_gpu = {g: h for h in holders if h.node_id == node.id for g in h.gpus}
    out = []
    for gpu in sorted(node.gpus, key=lambda g: g.index):
        h = by_gpu.get(gpu.index)
        if h is None:
            out.append(GpuUse(index=gpu.index, memory_total=gpu.memory))
            continue
        key = (h.job_id, h.worker)
        used = memory.get(key)
        named = caller.is_admin or h.workspace_id in seen
        out.append(
            GpuUse(
                index=gpu.index,
                held=True,
                workspace=h.workspace if named else None,
                job_id=h.job_id if named else None,
                job_name=h.job_name if named else None,
                worker=h.worker if named else None,
                util=util.get(key),
                memory_used=None if used is None else used / len(h.gpus),
                memory_total=gpu.memory,
            )
        )
    return out


async def holders(session: AsyncSession) -> list[Holder]:
    """Every active worker that holds GPUs, with its job's and workspace's names."""
    rows = await session.execute(
        select(
            Worker.node_id,
            Job.workspace_id,
            Workspace.name,
            Worker.job_id,
            Job.name,
            Worker.index,
            Worker.gpus,
        )
        .join(Job, Job.id == Worker.job_id)
        .join(Workspace, Workspace.id == Job.workspace_id)
        .where(Worker.active.is_(True))
    )
    return [
        Holder(node, ws_id, ws, job, name, index, tuple(int(g) for g in gpus))
        for node, ws_id, ws, job, name, index, gpus in rows.tuples()
        if gpus
    ]


async def with_gpu_use(
    session: AsyncSession,
    nodes: list[NodeView],
    readings: UtilReadings,
    caller: Principal,
    now: float,
) -> list[NodeView]:
    """`nodes` with each one's `gpu_use` filled in, as `caller` may see it."""
    if not any(n.gpus for n in nodes):
        return nodes
    held = await holders(session)
    util, memory = readings.values(now), readings.memory_values(now)
    return [
        n.model_copy(update={"gpu_use": gpu_use(n, held, util, memory, caller)}) for n in nodes
    ]
