"""The one way a job row changes: a write guarded by the version it was read at."""

from __future__ import annotations

import sys

from kaon.core.jobs import JobSpec, JobStatus, StopReason
from kaon.server.db.models import Job
from kaon.server.services.job_state import guarded_update, request_cancel
from tests.server.conftest import PlaneFactory, submit


class TestGuardedUpdate:
    async def test_a_write_from_a_stale_read_is_dropped(self, make_plane: PlaneFactory) -> None:
        plane = await make_plane()
        view = await submit(plane, JobSpec(command=[sys.executable, "-c", "pass"]))
        async with plane.db.session() as s:
            seen = await s.get(Job, view.id)
        assert seen is not None and seen.version == 0
        async with plane.db.session() as s:  # someone else moves the job on first
            assert await guarded_update(s, seen, {"message": "first"})
        async with plane.db.session() as s:  # a step that read version 0 is now stale
            assert not await guarded_update(s, seen, {"message": "stale"})
        async with plane.db.session() as s:
            now = await s.get(Job, view.id)
            assert now is not None and (now.message, now.version) == ("first", 1)

    async def test_cancel_a_queued_job_at_once_and_a_running_one_by_stop_reason(
        self, make_plane: PlaneFactory
    ) -> None:
        plane = await make_plane()
        view = await submit(plane, JobSpec(command=[sys.executable, "-c", "pass"]))
        async with plane.db.session() as s:
            job = await s.get(Job, view.id)
            assert job is not None
            assert await request_cancel(s, job, "stopped")
        async with plane.db.session() as s:
            job = await s.get(Job, view.id)
            assert job is not None and job.status == JobStatus.CANCELLED.value
            assert await request_cancel(s, job, "again")  # nothing to do, not an error
            job.status, job.stop_reason = JobStatus.RUNNING.value, None
        async with plane.db.session() as s:
            job = await s.get(Job, view.id)
            assert job is not None
            assert await request_cancel(s, job, "stopping")
        async with plane.db.session() as s:
            job = await s.get(Job, view.id)
            assert job is not None
            assert (job.status, job.stop_reason) == (JobStatus.RUNNING.value, StopReason.CANCEL)
