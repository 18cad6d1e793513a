"""The one way a job row changes: an update guarded by its `version`.

The API (cancel), the job reconciler and the deployment reconciler all write job rows, and
a crash can repeat any step. Every write is ``UPDATE ... WHERE id = :id AND version =
:seen`` with the version bumped: a write that finds the row changed since it was read is
dropped (and reported as such), never applied over the newer state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.jobs import JobStatus, StopReason
from kaon.server.db.models import Job, utcnow

logger = logging.getLogger("kaon.jobs")


async def guarded_update(session: AsyncSession, job: Job, values: Mapping[str, object]) -> bool:
    """UPDATE ... WHERE version = :seen. False (and nothing written) if the row moved on."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job.id, Job.version == job.version)
        .values(version=job.version + 1, **values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        logger.info("job %s changed meanwhile; dropping a stale write", job.id)
        return False
    return True


def stop_values(job: Job, message: str) -> dict[str, object] | None:
    """What cancelling `job` writes: a queued job is cancelled at once; one that holds
    resources gets a stop reason (its workers get SIGTERM, a grace period, SIGKILL, and it
    becomes CANCELLED once they are gone). None when there is nothing to do."""
    status = JobStatus(job.status)
    if status.is_terminal() or job.stop_reason == StopReason.CANCEL.value:
        return None
    if status is JobStatus.QUEUED:
        return {"status": JobStatus.CANCELLED.value, "finished_at": utcnow(), "message": message}
    return {"stop_reason": StopReason.CANCEL.value, "message": message}


async def request_cancel(session: AsyncSession, job: Job, message: str) -> bool:
    """Cancel `job` (see `stop_values`). False if the row changed meanwhile."""
    values = stop_values(job, message)
    return values is None or await guarded_update(session, job, values)
