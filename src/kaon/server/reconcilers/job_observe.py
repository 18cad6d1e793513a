"""The observe step: what became of the workers of every job that holds resources.

For each such job, ask the executor for its workers' states, let the pure
`job_steps.next_step` decide, stop workers if it says so, and write the job's new status
(and the workers' exit codes) back under the job's version. A job leaves its attempt here:
it becomes terminal or goes back to the queue, and its workers' allocation is released,
only once none of its workers is alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import TemporaryBackendError
from kaon.core.jobs import JobStatus, StopReason
from kaon.executors.base import Executor, WorkerState
from kaon.server.db.models import Job, Worker
from kaon.server.db.session import Database
from kaon.server.reconcilers.job_steps import JobFacts, Step, check_path, next_step
from kaon.server.services.artifacts import keep_job_outputs
from kaon.server.services.job_state import guarded_update
from kaon.server.services.pool import HOLDING, active_workers, stored_spec

RETRY_BACKOFF_S = (1, 5, 15, 30, 60)
logger = logging.getLogger("kaon.reconciler.jobs")


async def observe(
    db: Database, executor: Executor, grace_s: float, clock: Callable[[], datetime]
) -> bool:
    """One observe step over every job that holds resources. Never True: what it changes
    is acted on by the schedule step of the same pass."""
    async with db.session() as s:
        jobs = list((await s.execute(select(Job).where(Job.status.in_(HOLDING)))).scalars())
        workers = await active_workers(s, [j.id for j in jobs])
    for job in jobs:
        mine = workers.get(job.id, [])
        handles = [w.handle for w in mine if w.handle]
        if not handles and job.status == JobStatus.STARTING.value and job.stop_reason is None:
            continue  # not launched yet: the launch step does that
        try:
            states = await asyncio.to_thread(executor.status, handles) if handles else []
            step = next_step(facts(job), states, clock())
            if step.stop_workers:
                alive = [st.handle for st in states if st.alive]
                await asyncio.to_thread(executor.stop, alive, grace_s)
        except TemporaryBackendError as e:
            # Its pool cannot be reached now: nothing is known, so nothing is decided.
            await _note(db, job, f"cannot see its workers now: {e}")
            continue
        if step.status is JobStatus.SUCCEEDED and job.status != JobStatus.SUCCEEDED.value:
            await _keep_outputs(db, executor, job)
        await _apply(db, job, mine, states, step, clock())
    return False


async def _keep_outputs(db: Database, executor: Executor, job: Job) -> None:
    """A succeeding job's outputs become an artifact before the job says it succeeded (a
    crash in between repeats this, which finds the version it made). A failure to keep
    them is logged, and does not hold the job back."""
    try:
        await keep_job_outputs(db, executor, job)
    except Exception:
        logger.exception("could not keep the outputs of job %s", job.id)


async def _note(db: Database, job: Job, message: str) -> None:
    """Say why a job is stuck, once (only when the message changes)."""
    if job.message != message:
        async with db.session() as s:
            await guarded_update(s, job, {"message": message})


def facts(job: Job) -> JobFacts:
    """What `next_step` needs to know of a job, from its row and its typed spec."""
    spec = stored_spec(job)
    return JobFacts(
        status=JobStatus(job.status),
        stop_reason=StopReason(job.stop_reason) if job.stop_reason else None,
        workers=spec.workers,
        max_retries=spec.max_retries,
        retries_used=job.retries_used,
        started_at=job.started_at,
        timeout_s=spec.timeout_s,
    )


async def _apply(
    db: Database,
    job: Job,
    workers: list[Worker],
    states: list[WorkerState],
    step: Step,
    now: datetime,
) -> None:
    values: dict[str, object] = {}
    if step.stop_reason is not None and step.stop_reason.value != job.stop_reason:
        values["stop_reason"] = step.stop_reason.value
    if step.message is not None:
        values["message"] = step.message
    final = step.status
    if final is not None and final.value != job.status:
        check_path(JobStatus(job.status), final, step.stop_reason)
        values["status"] = final.value
        values.update(_leave_attempt(job, final, step.stop_reason, now, workers))
    if not values and not _worker_changes(workers, states):
        return
    async with db.session() as s:
        if values and not await guarded_update(s, job, values):
            return
        release = final is not None and not final.holds_resources()
        await _record_workers(s, workers, states, release, now)


def _leave_attempt(
    job: Job, status: JobStatus, reason: StopReason | None, now: datetime, workers: list[Worker]
) -> dict[str, object]:
    """Bookkeeping when a job leaves its attempt: service received, restarts, lost time,
    the retry back-off. Nothing while it still holds resources."""
    values: dict[str, object] = {}
    if status.holds_resources():
        return values
    gpus = sum(len(w.gpus) for w in workers)
    ran = (now - job.started_at).total_seconds() if job.started_at else 0.0
    values["attained_gpu_seconds"] = job.attained_gpu_seconds + ran * gpus
    values["stop_reason"] = None
    if status is not JobStatus.QUEUED:
        values.update(finished_at=now, job_token_hash=None)
        return values
    values.update(restart_count=job.restart_count + 1, started_at=None, job_token_hash=None)
    if reason in (StopReason.PREEMPT, StopReason.LOST):
        values.update(
            preemptions=job.preemptions + 1, lost_gpu_seconds=job.lost_gpu_seconds + ran * gpus
        )
    if reason is StopReason.RETRY:
        delay = RETRY_BACKOFF_S[min(job.retries_used, len(RETRY_BACKOFF_S) - 1)]
        values.update(retries_used=job.retries_used + 1, not_before=now + timedelta(seconds=delay))
    return values


def _worker_changes(workers: list[Worker], states: list[WorkerState]) -> bool:
    """True when a worker ended and its row does not say so yet."""
    by_handle = {w.handle: w for w in workers}
    return any(
        not st.alive
        and (
            by_handle[st.handle].exit_code != st.exit_code or by_handle[st.handle].ended_at is None
        )
        for st in states
        if st.handle in by_handle
    )


async def _record_workers(
    s: AsyncSession,
    workers: list[Worker],
    states: list[WorkerState],
    release: bool,
    now: datetime,
) -> None:
    by_handle = {st.handle: st for st in states}
    for w in workers:
        st = by_handle.get(w.handle or "")
        values: dict[str, object] = {}
        if st is not None and not st.alive and w.ended_at is None:
            values.update(exit_code=st.exit_code, reason=st.reason, ended_at=now)
        if release:
            values["active"] = False
        if values:
            await s.execute(update(Worker).where(Worker.id == w.id).values(**values))
