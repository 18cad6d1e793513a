"""Workspace quotas: set by admins, read by everyone, enforced by the scheduler."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import InvalidSpecError, NotFoundError
from kaon.core.quotas import QuotaSpec, QuotaUsage, QuotaView
from kaon.core.resources import Resources
from kaon.scheduler.model import Quota as SchedulerQuota
from kaon.server.db.models import Job, Quota, Worker, Workspace, utcnow
from kaon.server.security.principal import Principal
from kaon.server.wake import Wake

INF = float("inf")


async def _workspace_id(session: AsyncSession, name: str) -> str:
    found = await session.scalar(select(Workspace.id).where(Workspace.name == name))
    if found is None:
        raise InvalidSpecError(f"workspace {name!r} does not exist", field="workspace")
    return found


async def set_quota(
    session: AsyncSession, caller: Principal, workspace: str, spec: QuotaSpec, wake: Wake
) -> QuotaView:
    caller.require_admin()
    workspace_id = await _workspace_id(session, workspace)
    row = await session.get(Quota, workspace_id)
    if row is None:
        row = Quota(workspace_id=workspace_id)
        session.add(row)
    row.gpus, row.cpu, row.memory = spec.gpus, spec.cpus, spec.memory
    row.borrow_gpus, row.borrow_cpu, row.borrow_memory = (
        spec.borrow_limit,
        spec.borrow_cpus,
        spec.borrow_memory,
    )
    row.storage = spec.storage
    row.updated_at = utcnow()
    await session.commit()
    wake.jobs()
    return QuotaView(workspace=workspace, quota=spec, used=await _usage(session, workspace_id))


async def delete_quota(
    session: AsyncSession, caller: Principal, workspace: str, wake: Wake
) -> None:
    caller.require_admin()
    row = await session.get(Quota, await _workspace_id(session, workspace))
    if row is None:
        raise NotFoundError(f"workspace {workspace!r} has no quota")
    await session.delete(row)
    await session.commit()
    wake.jobs()


def _spec(row: Quota) -> QuotaSpec:
    return QuotaSpec(
        gpus=row.gpus,
        cpus=row.cpu,
        memory=row.memory,
        borrow_limit=row.borrow_gpus,
        borrow_cpus=row.borrow_cpu,
        borrow_memory=row.borrow_memory,
        storage=row.storage,
    )


async def list_quotas(session: AsyncSession, caller: Principal) -> list[QuotaView]:
    """Admins see every workspace's quota; members see their workspaces' quotas."""
    query = select(Quota, Workspace.name).join(Workspace, Workspace.id == Quota.workspace_id)
    if not caller.is_admin:
        query = query.where(Quota.workspace_id.in_(list(caller.workspaces.values())))
    rows = (await session.execute(query.order_by(Workspace.name))).tuples().all()
    return [
        QuotaView(workspace=name, quota=_spec(q), used=await _usage(session, q.workspace_id))
        for q, name in rows
    ]


async def _usage(session: AsyncSession, workspace_id: str) -> QuotaUsage:
    rows = await session.execute(
        select(Worker.cpu, Worker.memory, Worker.gpus)
        .join(Job, Job.id == Worker.job_id)
        .where(Job.workspace_id == workspace_id, Worker.active.is_(True))
    )
    usage = QuotaUsage()
    for cpu, memory, gpus in rows.tuples():
        usage.cpus += cpu
        usage.memory += memory
        usage.gpus += len(gpus)
    return usage


async def scheduler_quotas(session: AsyncSession) -> dict[str, SchedulerQuota]:
    """Quotas keyed by workspace id, in the scheduler's terms (unset = unlimited)."""
    rows = (await session.execute(select(Quota))).scalars().all()
    return {q.workspace_id: to_scheduler(q) for q in rows}


def to_scheduler(q: Quota) -> SchedulerQuota:
    def value(v: float | None) -> float:
        return INF if v is None else float(v)

    return SchedulerQuota(
        gpus=value(q.gpus),
        cpu=value(q.cpu),
        memory=value(q.memory),
        borrow_gpus=value(q.borrow_gpus),
        borrow_cpu=value(q.borrow_cpu),
        borrow_memory=value(q.borrow_memory),
    )


async def check_fits_quota(
    session: AsyncSession, workspace_id: str, res: Resources, n: int = 1
) -> None:
    """422 for work larger than its workspace's quota plus borrow limit (`n` workers of
    `res` each): it would wait forever."""
    row = await session.get(Quota, workspace_id)
    if row is None:
        return
    q = to_scheduler(row)
    for label, want, limit in (
        ("GPUs", res.gpus * n, q.gpus + q.borrow_gpus),
        ("CPUs", res.cpu * n, q.cpu + q.borrow_cpu),
        ("bytes of memory", res.memory * n, q.memory + q.borrow_memory),
    ):
        if want > limit:
            raise InvalidSpecError(
                f"the job needs {want:g} {label} in all, more than its workspace's quota plus "
                f"borrow limit ({limit:g}); it could never start",
                field="resources",
            )
