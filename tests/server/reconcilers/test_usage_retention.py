"""The usage retention loop, stepped with `run_once()` and an injected clock: a finished
job's usage is kept for the retention and then deleted; a running job's usage and the
metrics a job reported itself are never touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from kaon.core.jobs import JobStatus
from kaon.core.usage import CPU, RSS
from kaon.server.db.models import Job, Metric
from kaon.server.db.session import Database
from kaon.server.reconcilers.usage import UsageRetention
from kaon.server.services.auth import ensure_default_workspace
from tests.server.conftest import PlaneFactory

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RETENTION = timedelta(days=7)


async def _job(db: Database, job_id: str, finished_at: datetime | None) -> None:
    """A job with two usage samples' worth of rows and one reported metric."""
    async with db.session() as s:
        workspace_id = await ensure_default_workspace(s)
        status = JobStatus.SUCCEEDED if finished_at else JobStatus.RUNNING
        s.add(
            Job(
                id=job_id,
                workspace_id=workspace_id,
                spec={"command": ["true"]},
                status=status.value,
                submitted_at=T0,
                finished_at=finished_at,
            )
        )
        await s.flush()
        for name, value in ((CPU, 1.0), (RSS, 2.0**28), ("loss", 0.5)):
            s.add(Metric(job_id=job_id, worker=0, time=T0.timestamp(), name=name, value=value))
        await s.commit()


class TestUsageRetention:
    async def test_usage_outlives_its_job_then_expires(self, make_plane: PlaneFactory) -> None:
        plane = await make_plane()
        await _job(plane.db, "j-done", finished_at=T0)
        await _job(plane.db, "j-running", finished_at=None)
        now = T0
        loop = UsageRetention(plane.db, RETENTION.total_seconds(), 60, clock=lambda: now)

        async def names(job_id: str) -> set[str]:
            async with plane.db.session() as s:
                rows = await s.execute(select(Metric.name).where(Metric.job_id == job_id))
                return set(rows.scalars())

        now = T0 + RETENTION - timedelta(seconds=1)
        assert await loop.run_once() is False
        assert await names("j-done") == {CPU, RSS, "loss"}  # ended, still within retention

        now = T0 + RETENTION + timedelta(seconds=1)
        assert await loop.run_once() is False
        assert await names("j-done") == {"loss"}  # its usage went; its reports stay
        assert await names("j-running") == {CPU, RSS, "loss"}
