"""Jobs: submit, read, cancel, and the metrics a job reports.

Submitting writes the desired state (a QUEUED row) and returns; the job reconciler does
the rest. What can be known at submit time is checked here, so a job that could never run
fails at once with 422 instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import AuthError, ConflictError, InvalidSpecError, NotFoundError
from kaon.core.jobs import JobSpec, JobStatus, JobView, MetricBatch, MetricView, WorkerView
from kaon.scheduler import NodeSnapshot, Workload
from kaon.scheduler.policy import fits_anywhere
from kaon.server.db.models import Job, Metric, Node, Worker, Workspace, utcnow
from kaon.server.services import quotas, snapshots
from kaon.server.services.auth import Principal
from kaon.server.services.ids import hash_token, new_id

MAX_LIST = 1000


async def submit(
    session: AsyncSession, caller: Principal, workspace: str, spec: JobSpec
) -> JobView:
    workspace_id = caller.workspace_id(workspace)
    if spec.snapshot is not None:
        try:
            await snapshots.require(session, workspace_id, spec.snapshot)
        except NotFoundError as e:
            raise InvalidSpecError(str(e), field="snapshot") from None
    await check_fits_pool(session, spec)
    await quotas.check_fits_quota(session, workspace_id, spec)
    job = Job(
        id=new_id("j"),
        workspace_id=workspace_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status=JobStatus.QUEUED.value,
        priority=spec.priority,
        submitted_at=utcnow(),
    )
    session.add(job)
    await session.flush()
    return to_view(job, workspace, [])


async def check_fits_pool(session: AsyncSession, spec: JobSpec) -> None:
    """422 for a job that could not run even on an empty pool."""
    nodes = [_empty_node(n) for n in (await session.execute(select(Node))).scalars()]
    res = spec.resources
    if not nodes:
        raise InvalidSpecError("the pool has no nodes yet", field="resources")
    biggest = max(len(n.gpus) for n in nodes)
    if res.gpus > biggest:
        raise InvalidSpecError(
            f"no node has {res.gpus} GPUs (the largest has {biggest})", field="resources.gpus"
        )
    for attr, label in (("cpu", "CPUs"), ("memory", "bytes of memory")):
        most = max(getattr(n, attr) for n in nodes)
        if getattr(res, attr) > most:
            raise InvalidSpecError(
                f"no node has {getattr(res, attr)} {label} (the largest has {most})",
                field=f"resources.{attr}",
            )
    workload = Workload(
        id="new",
        workspace="",
        workers=spec.workers,
        cpu=res.cpu,
        memory=res.memory,
        gpus=res.gpus,
        submitted_at=0.0,
        gpu_type=res.gpu_type,
        labels=tuple(sorted(spec.labels.items())),
    )
    if not fits_anywhere(tuple(nodes), workload):
        raise InvalidSpecError(
            f"{spec.workers} workers with these resources can never fit the pool "
            f"({len(nodes)} node(s)); ask for fewer workers or smaller ones",
            field="workers",
        )


def _empty_node(n: Node) -> NodeSnapshot:
    gpus = tuple(int(g["index"]) for g in n.gpus)
    models = {g.get("model") for g in n.gpus}
    return NodeSnapshot(
        id=n.id,
        cpu=n.cpu,
        memory=n.memory,
        gpus=gpus,
        cpu_free=n.cpu,
        memory_free=n.memory,
        gpus_free=gpus,
        gpu_type=models.pop() if len(models) == 1 else None,
        labels=tuple(sorted((str(k), str(v)) for k, v in n.labels.items())),
    )


def to_view(job: Job, workspace: str, workers: Sequence[Worker]) -> JobView:
    return JobView(
        id=job.id,
        workspace=workspace,
        name=job.name,
        status=JobStatus(job.status),
        spec=JobSpec.model_validate(job.spec),
        message=job.message,
        waiting_reason=job.waiting_reason if job.status == JobStatus.QUEUED.value else None,
        restart_count=job.restart_count,
        preemptions=job.preemptions,
        lost_gpu_seconds=job.lost_gpu_seconds,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        workers=[
            WorkerView(
                index=w.index,
                node=w.node_id,
                gpus=list(w.gpus),
                pid=w.pid,
                exit_code=w.exit_code,
                reason=w.reason,
            )
            for w in sorted(workers, key=lambda w: w.index)
        ],
    )


async def _load(session: AsyncSession, caller: Principal, workspace: str, job_id: str) -> Job:
    workspace_id = caller.workspace_id(workspace)
    job = await session.get(Job, job_id)
    if job is None or job.workspace_id != workspace_id:
        raise NotFoundError(f"job {job_id!r} not found")
    return job


async def current_workers(session: AsyncSession, job: Job) -> list[Worker]:
    rows = await session.execute(
        select(Worker)
        .where(Worker.job_id == job.id, Worker.attempt == job.attempt)
        .order_by(Worker.index)
    )
    return list(rows.scalars())


async def get(session: AsyncSession, caller: Principal, workspace: str, job_id: str) -> JobView:
    job = await _load(session, caller, workspace, job_id)
    return to_view(job, workspace, await current_workers(session, job))


async def list_jobs(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    status: Sequence[JobStatus] = (),
    limit: int = 100,
) -> list[JobView]:
    workspace_id = caller.workspace_id(workspace)
    query = select(Job).where(Job.workspace_id == workspace_id, Job.kind == "job")
    if status:
        query = query.where(Job.status.in_([s.value for s in status]))
    query = query.order_by(Job.submitted_at.desc(), Job.id).limit(min(limit, MAX_LIST))
    jobs = list((await session.execute(query)).scalars())
    workers = await _workers_of(session, jobs)
    return [to_view(j, workspace, workers.get((j.id, j.attempt), [])) for j in jobs]


async def _workers_of(
    session: AsyncSession, jobs: list[Job]
) -> dict[tuple[str, int], list[Worker]]:
    if not jobs:
        return {}
    rows = await session.execute(select(Worker).where(Worker.job_id.in_([j.id for j in jobs])))
    out: dict[tuple[str, int], list[Worker]] = {}
    for w in rows.scalars():
        out.setdefault((w.job_id, w.attempt), []).append(w)
    return out


async def cancel(session: AsyncSession, caller: Principal, workspace: str, job_id: str) -> JobView:
    """A queued job is cancelled at once; a running one is asked to stop (SIGTERM, grace,
    SIGKILL) and becomes CANCELLED when its workers are gone. Cancelling twice is fine."""
    job = await _load(session, caller, workspace, job_id)
    status = JobStatus(job.status)
    if status.is_terminal():
        if status is JobStatus.CANCELLED:
            return await get(session, caller, workspace, job_id)
        raise ConflictError(f"job {job_id} already {status.value}")
    values: dict[str, object]
    if status is JobStatus.QUEUED:
        values = {
            "status": JobStatus.CANCELLED.value,
            "finished_at": utcnow(),
            "message": "cancelled",
        }
    else:
        values = {"stop_reason": "cancel", "message": "cancelling: stopping workers"}
    result = await session.execute(
        update(Job)
        .where(Job.id == job.id, Job.version == job.version)
        .values(version=job.version + 1, **values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ConflictError(f"job {job_id} changed meanwhile; try again")
    await session.refresh(job)
    return to_view(job, workspace, await current_workers(session, job))


async def add_metrics(
    session: AsyncSession, job_id: str, bearer: str | None, batch: MetricBatch
) -> int:
    """Store points reported by a running job. The job's own token (given to its workers
    in KAON_JOB_TOKEN) is the only credential accepted here."""
    job = await session.get(Job, job_id)
    if (
        job is None
        or bearer is None
        or job.job_token_hash is None
        or job.job_token_hash != hash_token(bearer)
    ):
        raise AuthError("invalid job token")
    rows = [
        Metric(
            job_id=job_id,
            worker=batch.worker,
            step=p.step,
            time=p.time or utcnow().timestamp(),
            name=name,
            value=value,
        )
        for p in batch.points
        for name, value in p.values.items()
    ]
    session.add_all(rows)
    await session.flush()
    return len(rows)


async def metrics(
    session: AsyncSession, caller: Principal, workspace: str, job_id: str, name: str | None
) -> list[MetricView]:
    job = await _load(session, caller, workspace, job_id)
    query = select(Metric).where(Metric.job_id == job.id)
    if name:
        query = query.where(Metric.name == name)
    query = query.order_by(Metric.time, Metric.id).limit(100_000)
    return [
        MetricView(worker=m.worker, step=m.step, time=m.time, name=m.name, value=m.value)
        for m in (await session.execute(query)).scalars()
    ]


async def worker_handle(
    session: AsyncSession, caller: Principal, workspace: str, job_id: str, worker: int
) -> tuple[Job, str | None]:
    """The executor handle of a worker of the job's latest attempt (None before launch)."""
    job = await _load(session, caller, workspace, job_id)
    row = await session.scalar(
        select(Worker)
        .where(Worker.job_id == job.id, Worker.index == worker)
        .order_by(Worker.attempt.desc())
        .limit(1)
    )
    if row is None:
        if worker >= JobSpec.model_validate(job.spec).workers:
            raise NotFoundError(f"job {job_id} has no worker {worker}")
        return job, None
    return job, row.handle


async def count_jobs(session: AsyncSession, workspace_id: str) -> int:  # pragma: no cover
    return int(
        await session.scalar(select(func.count()).where(Job.workspace_id == workspace_id)) or 0
    )


async def workspace_name(session: AsyncSession, workspace_id: str) -> str:
    return str(await session.scalar(select(Workspace.name).where(Workspace.id == workspace_id)))
