"""Jobs: submit, read, cancel, and the metrics a job reports.

Submitting writes the desired state (a QUEUED row), commits, wakes the job reconciler and
returns; the reconciler does the rest. What can be known at submit time is checked here,
so a job that could never run fails at once with 422 instead of waiting forever.

Every read or action on one job takes its id or a unique prefix of it, within the caller's
workspace (404 for none, 409 naming the candidates for several): ids are cut short in
narrow tables and typed by hand.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import (
    AuthError,
    ConflictError,
    InvalidSpecError,
    LimitExceededError,
    NotFoundError,
)
from kaon.core.jobs import JobSpec, JobStatus, JobView, MetricBatch, MetricView, WorkerView
from kaon.core.tokens import hash_token
from kaon.core.usage import USAGE_PREFIX
from kaon.server.db.models import Job, Metric, Worker, utcnow
from kaon.server.security.principal import Principal
from kaon.server.security.tokens import new_id
from kaon.server.services import artifacts, pool, quotas, secrets, snapshots
from kaon.server.services.job_state import request_cancel
from kaon.server.wake import Wake

MAX_LIST = 1000
CANDIDATES_SHOWN = 5  # ids an ambiguous prefix error names
CANCELLED_BY_USER = "cancelled by a user"  # true while the workers stop, and after


@dataclass(frozen=True)
class JobLimits:
    """What one workspace may ask of the server (settings ``max_workers_per_job`` and
    ``max_queued_jobs``): each worker is a supervised process and each queued job a row
    every scheduling pass reads, so a member could otherwise flood both."""

    max_workers: int = 128
    max_queued: int = 1000


async def submit(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    spec: JobSpec,
    wake: Wake,
    limits: JobLimits | None = None,
) -> JobView:
    workspace_id = caller.workspace_id(workspace)
    if limits is not None:
        await _check_limits(session, workspace_id, spec, limits)
    await snapshots.require_for_spec(session, workspace_id, spec.snapshot)
    await pool.check_job_fits(session, spec)
    await quotas.check_fits_quota(session, workspace_id, spec.resources, spec.workers)
    await secrets.require_refs(session, workspace_id, spec.env)
    if spec.inputs:  # each one pinned to a version now
        pinned = await artifacts.require_inputs(session, workspace_id, spec.inputs)
        spec = spec.model_copy(update={"inputs": pinned})
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
    await session.commit()
    wake.jobs()
    return to_view(job, workspace, [])


async def _check_limits(
    session: AsyncSession, workspace_id: str, spec: JobSpec, limits: JobLimits
) -> None:
    """422 naming ``workers`` for a gang over the limit; 429 when the workspace already
    has as many jobs waiting as it may (it can submit again once some have started)."""
    if spec.workers > limits.max_workers:
        raise InvalidSpecError(
            f"a job may have at most {limits.max_workers} workers on this server "
            f"(KAON_MAX_WORKERS_PER_JOB); this one asks for {spec.workers}",
            field="workers",
        )
    queued = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.workspace_id == workspace_id,
            Job.kind == "job",
            Job.status == JobStatus.QUEUED.value,
        )
    )
    if (queued or 0) >= limits.max_queued:
        raise LimitExceededError(
            f"the workspace has {queued} jobs waiting, the most this server allows "
            "(KAON_MAX_QUEUED_JOBS); submit again once some have started, or cancel some",
            limit="max_queued_jobs",
        )


def to_view(job: Job, workspace: str, workers: Sequence[Worker]) -> JobView:
    return JobView(
        id=job.id,
        workspace=workspace,
        name=job.name,
        status=JobStatus(job.status),
        spec=pool.stored_spec(job),
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
    """The caller's job by its id or a unique prefix of one (people copy ids from narrow
    tables and type the first few characters). Only the caller's workspace is searched, so
    another workspace's job is never found, and never makes a prefix ambiguous."""
    workspace_id = caller.workspace_id(workspace)
    job = await session.get(Job, job_id)
    if job is not None and job.workspace_id == workspace_id:
        return job
    return await _by_prefix(session, workspace_id, job_id)


async def load_job(session: AsyncSession, caller: Principal, workspace: str, job_id: str) -> Job:
    """The caller's job, found as every read of a job finds it (for the services of a
    job's parts: its usage, its files)."""
    return await _load(session, caller, workspace, job_id)


async def _by_prefix(session: AsyncSession, workspace_id: str, prefix: str) -> Job:
    """404 when no job's id starts with `prefix`, 409 naming the candidates when several
    do. LIKE ignores case on SQLite, so the matches are checked again here: a prefix means
    the same on SQLite and PostgreSQL."""
    query = (
        select(Job)
        .where(Job.workspace_id == workspace_id, Job.id.startswith(prefix, autoescape=True))
        .order_by(Job.id)
        .limit(CANDIDATES_SHOWN + 1)
    )
    found = [j for j in (await session.execute(query)).scalars() if j.id.startswith(prefix)]
    if not found:
        raise NotFoundError(f"job {prefix!r} not found")
    if len(found) > 1:
        shown = ", ".join(j.id for j in found[:CANDIDATES_SHOWN])
        more = " and more" if len(found) > CANDIDATES_SHOWN else ""
        raise ConflictError(
            f"{prefix!r} is the start of several job ids ({shown}{more}); give more of it"
        )
    return found[0]


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


@dataclass(frozen=True)
class JobPage:
    """One page of a workspace's jobs, newest first: `next_cursor` names the page after it
    (None on the last), `total` counts every job the filter matches."""

    jobs: list[JobView]
    next_cursor: str | None
    total: int


async def list_page(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    status: Sequence[JobStatus] = (),
    limit: int = 100,
    cursor: str | None = None,
) -> JobPage:
    """Keyset paging (newest first, ties by id), so page 100 of 10,000 jobs costs what page
    1 does: the cursor is the last row's (submitted_at, id), never an offset."""
    workspace_id = caller.workspace_id(workspace)
    where = [Job.workspace_id == workspace_id, Job.kind == "job"]
    if status:
        where.append(Job.status.in_([s.value for s in status]))
    total = await session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    if cursor is not None:
        at, last_id = _decode_cursor(cursor)
        where.append(or_(Job.submitted_at < at, and_(Job.submitted_at == at, Job.id > last_id)))
    size = min(limit, MAX_LIST)
    query = select(Job).where(*where).order_by(Job.submitted_at.desc(), Job.id).limit(size + 1)
    found = list((await session.execute(query)).scalars())
    jobs, more = found[:size], len(found) > size
    workers = await _workers_of(session, jobs)
    views = [to_view(j, workspace, workers.get((j.id, j.attempt), [])) for j in jobs]
    return JobPage(views, _encode_cursor(jobs[-1]) if more else None, total)


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.submitted_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (submitted_at, id) a cursor names; 422 for one this server did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, last_id = json.loads(raw)
        return datetime.fromisoformat(at), str(last_id)
    except (ValueError, TypeError) as e:
        raise InvalidSpecError("not a cursor this server gave out", field="cursor") from e


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


async def cancel(
    session: AsyncSession, caller: Principal, workspace: str, job_id: str, wake: Wake
) -> JobView:
    """A queued job is cancelled at once; a running one is asked to stop (SIGTERM, grace,
    SIGKILL) and becomes CANCELLED when its workers are gone. Cancelling twice is fine.
    `job_id` may be a unique prefix, as everywhere a job is named."""
    job = await _load(session, caller, workspace, job_id)
    status = JobStatus(job.status)
    if status.is_terminal() and status is not JobStatus.CANCELLED:
        raise ConflictError(f"job {job.id} already {status.value}")
    # One message for both paths: the reconciler keeps it when the job becomes CANCELLED,
    # so it must not say "stopping" once nothing is.
    if not await request_cancel(session, job, CANCELLED_BY_USER):
        raise ConflictError(f"job {job.id} changed meanwhile; try again")
    await session.commit()
    wake.jobs()
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
        or not hmac.compare_digest(job.job_token_hash, hash_token(bearer))
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
    await session.commit()
    return len(rows)


async def metrics(
    session: AsyncSession, caller: Principal, workspace: str, job_id: str, name: str | None
) -> list[MetricView]:
    job = await _load(session, caller, workspace, job_id)
    query = select(Metric).where(Metric.job_id == job.id)
    if name:
        query = query.where(Metric.name == name)
    else:  # resource usage (sys/...) has its own answer: it would crowd out the reports
        query = query.where(~Metric.name.startswith(USAGE_PREFIX, autoescape=True))
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
        if worker >= pool.stored_spec(job).workers:
            raise NotFoundError(f"job {job.id} has no worker {worker}")
        return job, None
    return job, row.handle
