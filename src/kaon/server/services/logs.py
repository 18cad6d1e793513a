"""Workers' logs, for jobs and deployment replicas alike.

The executor holds the logs (a file beside each local worker; on a Ray node, the node's
own disk). A read asks the executor for the bytes after an offset; a follow keeps asking
until the job ends. Each poll reads the job in a short session of its own, so a client
that follows a log for hours holds no database connection meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kaon.core.jobs import JobStatus
from kaon.executors.base import Executor
from kaon.server.db.session import Database
from kaon.server.security.principal import Principal
from kaon.server.services import deployments, jobs

FOLLOW_POLL_S = 0.25


async def job_log(
    db: Database,
    executor: Executor,
    caller: Principal,
    workspace: str,
    job_id: str,
    worker: int = 0,
    offset: int = 0,
    follow: bool = False,
) -> AsyncIterator[bytes]:
    """A worker's log from byte `offset`; with `follow`, until the job ends. Raises
    NotFoundError at once (before the first byte) for a job or worker the caller cannot
    see."""
    async with db.unit_of_work() as s:
        await jobs.worker_handle(s, caller, workspace, job_id, worker)
    return _chunks(db, executor, caller, workspace, job_id, worker, offset, follow)


async def replica_log(
    db: Database,
    executor: Executor,
    caller: Principal,
    workspace: str,
    deployment: str,
    replica: str | None,
    offset: int = 0,
    follow: bool = False,
) -> AsyncIterator[bytes]:
    """A replica's log (the newest ready or crashed replica's when none is named)."""
    async with db.unit_of_work() as s:
        job_id = await deployments.replica_job(s, caller, workspace, deployment, replica)
    return await job_log(db, executor, caller, workspace, job_id, 0, offset, follow)


async def _chunks(
    db: Database,
    executor: Executor,
    caller: Principal,
    workspace: str,
    job_id: str,
    worker: int,
    position: int,
    follow: bool,
) -> AsyncIterator[bytes]:
    while True:
        async with db.unit_of_work() as s:
            job, handle = await jobs.worker_handle(s, caller, workspace, job_id, worker)
        data = await asyncio.to_thread(executor.logs, handle, position) if handle else b""
        if data:
            position += len(data)
            yield data
            continue
        if not follow or JobStatus(job.status).is_terminal():
            return
        await asyncio.sleep(FOLLOW_POLL_S)
