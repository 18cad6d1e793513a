"""Workers' logs, for jobs and deployment replicas alike.

The executor holds the logs (a file beside each local worker; on a Ray node, the node's
own disk). A read asks the executor for the bytes after an offset; a follow keeps asking
until the job ends. Each poll reads the job in a short session of its own, so a client
that follows a log for hours holds no database connection meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kaon.core.errors import BackendError, InvalidSpecError, TemporaryBackendError
from kaon.core.jobs import JobStatus
from kaon.executors.base import Executor
from kaon.server.db.session import Database
from kaon.server.security.principal import Principal
from kaon.server.services import deployments, jobs, secrets

FOLLOW_POLL_S = 0.25
MAX_OFFSET = 2**53  # far beyond any log; larger numbers do not fit a file offset


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
    """A worker's log from byte `offset`; with `follow`, until the job ends. Raises at
    once, before the answer starts, for a job or worker the caller cannot see
    (NotFoundError) and for a log that cannot be read now (a node's agent that does not
    answer: TemporaryBackendError, 503): once the answer has started, an error could only
    cut it."""
    if offset > MAX_OFFSET:
        raise InvalidSpecError(f"offset must be at most {MAX_OFFSET}", field="offset")
    async with db.unit_of_work() as s:
        job, handle = await jobs.worker_handle(s, caller, workspace, job_id, worker)
    first = await asyncio.to_thread(executor.logs, handle, offset) if handle else b""
    chunks = _chunks(db, executor, caller, workspace, job_id, worker, offset, follow, first)
    return await secrets.mask_log(db, executor, job, handle, offset, chunks)  # *** for values


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
    first: bytes,
) -> AsyncIterator[bytes]:
    """The log from `position`, `first` being what was read there already. A read that
    fails later ends the text with a line that says so (a follow tries again first: a
    node's agent may be restarting), never with a cut connection."""
    data: bytes | None = first
    while True:
        async with db.unit_of_work() as s:
            job, handle = await jobs.worker_handle(s, caller, workspace, job_id, worker)
        ended = JobStatus(job.status).is_terminal()
        if data is None:
            try:
                data = await asyncio.to_thread(executor.logs, handle, position) if handle else b""
            except BackendError as e:
                if follow and not ended and isinstance(e, TemporaryBackendError):
                    await asyncio.sleep(FOLLOW_POLL_S * 4)
                    continue
                yield f"\n[kaon] the rest of this log cannot be read now: {e.message}\n".encode()
                return
        if data:
            position += len(data)
            yield data
            data = None
            continue
        if not follow or ended:
            return
        data = None
        await asyncio.sleep(FOLLOW_POLL_S)
