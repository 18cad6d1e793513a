"""A job's resource usage: read it (``kaon job top``) and let it go once it is old.

Each worker's supervisor posts samples with the job's token to the metrics endpoint under
reserved ``sys/`` names (`kaon.core.usage`), so storing them needs nothing here. Reading
groups them back into one series per worker, each point a whole sample. Usage is kept
`retention` after its job ends and then deleted (`expire`, run by the retention loop);
what a job reported with `kaon.report` is the user's record and is not touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.jobs import JobStatus
from kaon.core.usage import CPU, GPU_MEM, GPU_UTIL, RSS, USAGE_NAMES, JobUsage, UsageSample
from kaon.core.usage import WorkerUsage as WorkerUsageView
from kaon.server.db.models import Job, Metric
from kaon.server.security.principal import Principal
from kaon.server.services.jobs import load_job

MAX_POINTS = 100_000  # rows read for one answer: about 5 days of one worker at 5 s
_FIELDS = {CPU: "cpu", RSS: "rss_bytes", GPU_UTIL: "gpu_util", GPU_MEM: "gpu_mem_bytes"}
EXPIRE_BATCH = 500  # jobs whose usage one pass deletes (the next pass takes the rest)


async def job_usage(
    session: AsyncSession, caller: Principal, workspace: str, job_id: str
) -> JobUsage:
    """Every worker's samples of the job, oldest first, and its latest one. Found by the
    same rules as the job itself (another workspace's job is 404)."""
    job = await load_job(session, caller, workspace, job_id)
    query = (
        select(Metric.worker, Metric.time, Metric.name, Metric.value)
        .where(Metric.job_id == job.id, Metric.name.in_(USAGE_NAMES))
        .order_by(Metric.time.desc(), Metric.id.desc())
        .limit(MAX_POINTS)
    )
    samples: dict[tuple[int, float], dict[str, float]] = {}
    for worker, at, name, value in (await session.execute(query)).all():
        samples.setdefault((worker, at), {})[_FIELDS[name]] = value
    workers: dict[int, list[UsageSample]] = {}
    for (worker, at), fields in sorted(samples.items(), key=lambda kv: kv[0][1]):
        workers.setdefault(worker, []).append(UsageSample(time=at, **fields))
    return JobUsage(
        job_id=job.id,
        status=JobStatus(job.status),
        workers=[
            WorkerUsageView(worker=w, latest=series[-1], series=series)
            for w, series in sorted(workers.items())
        ],
    )


async def expire(session: AsyncSession, now: datetime, retention: timedelta) -> int:
    """Delete the usage of jobs that ended more than `retention` before `now`; the number
    of jobs whose usage went. A pass takes at most `EXPIRE_BATCH` jobs."""
    ended = (
        select(Metric.job_id)
        .join(Job, Job.id == Metric.job_id)
        .where(
            Job.finished_at.is_not(None),
            Job.finished_at < now - retention,
            Metric.name.in_(USAGE_NAMES),
        )
        .distinct()
        .limit(EXPIRE_BATCH)
    )
    job_ids = list((await session.execute(ended)).scalars())
    if job_ids:
        await session.execute(
            delete(Metric).where(Metric.job_id.in_(job_ids), Metric.name.in_(USAGE_NAMES))
        )
        await session.commit()
    return len(job_ids)
