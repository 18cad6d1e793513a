"""The job reconciler, one `run_once()` pass at a time, on a real database with real
processes: what a pass decides is asserted right after it, never after a sleep."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kaon.core.jobs import JobSpec, JobStatus
from kaon.core.resources import Resources
from kaon.server.db.models import Job
from kaon.server.reconcilers.job_launch import gang
from kaon.server.services.pool import active_workers
from tests.server.conftest import PlaneFactory, step_until, submit, view

PY = sys.executable
TWO_NODES = {"local_nodes": 2, "node_cpus": 4.0, "node_memory": 4 * 2**30}


def hold(flag: Path, cpu: float) -> JobSpec:
    """A job that runs until `flag` exists."""
    code = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)"
    return JobSpec(command=[PY, "-c", code], resources=Resources(cpu=cpu))


class TestGang:
    async def test_starts_whole_or_not_at_all(
        self, make_plane: PlaneFactory, tmp_path: Path
    ) -> None:
        plane = await make_plane(**TWO_NODES)
        a = await submit(plane, hold(tmp_path / "a", cpu=3))
        b = await submit(plane, hold(tmp_path / "b", cpu=3))
        await plane.jobs.run_once()  # schedule and launch both, one per node
        running = [await view(plane, j.id) for j in (a, b)]
        assert [j.status for j in running] == [JobStatus.RUNNING] * 2
        assert {j.workers[0].node for j in running} == {"local-0", "local-1"}

        # One CPU is free on each node: a gang of 2 x 2 CPUs must not start in part.
        show = "import os; e = os.environ; print(e['RANK'], e['LOCAL_RANK'], e['NODE_RANK'])"
        spec = JobSpec(command=[PY, "-c", show], workers=2, resources=Resources(cpu=2))
        g = await submit(plane, spec)
        for _ in range(3):
            await plane.jobs.run_once()
            waiting = await view(plane, g.id)
            assert waiting.status is JobStatus.QUEUED and waiting.workers == []
            assert waiting.waiting_reason

        (tmp_path / "a").touch()

        async def done() -> bool:
            return (await view(plane, g.id)).status.is_terminal()

        await step_until(plane, done, "the gang to run once a node is free")
        finished = await view(plane, g.id)
        assert finished.status is JobStatus.SUCCEEDED
        assert len({w.node for w in finished.workers}) == 1  # it fits one node: on one
        logs = sorted(plane.executor.logs(f"{g.id}/1/{i}").decode().strip() for i in range(2))
        assert logs == ["0 0 0", "1 1 0"]
        (tmp_path / "b").touch()


class TestBackfill:
    async def test_small_jobs_run_without_delaying_the_head(
        self, make_plane: PlaneFactory, tmp_path: Path
    ) -> None:
        plane = await make_plane(**TWO_NODES)
        a = await submit(plane, hold(tmp_path / "a", cpu=3))
        b = await submit(plane, hold(tmp_path / "b", cpu=3))
        await plane.jobs.run_once()
        head = await submit(
            plane, JobSpec(command=[PY, "-c", "print('head')"], resources=Resources(cpu=4))
        )
        await plane.jobs.run_once()
        assert (await view(plane, head.id)).waiting_reason

        small = await submit(plane, hold(tmp_path / "s", cpu=1))
        await plane.jobs.run_once()
        # The small job runs ahead of the head, on the node the head does not hold.
        assert (await view(plane, small.id)).status is JobStatus.RUNNING
        assert (await view(plane, head.id)).status is JobStatus.QUEUED

        (tmp_path / "a").touch()
        (tmp_path / "b").touch()

        async def head_started() -> bool:
            return (await view(plane, head.id)).status is not JobStatus.QUEUED

        await step_until(plane, head_started, "the head to start once a node is free")
        assert (await view(plane, small.id)).status is JobStatus.RUNNING  # not delayed by it
        (tmp_path / "s").touch()

        async def all_done() -> bool:
            views = [await view(plane, j.id) for j in (a, b, head, small)]
            return all(v.status.is_terminal() for v in views)

        await step_until(plane, all_done, "every job to end")
        for job in (a, b, head, small):
            assert (await view(plane, job.id)).status is JobStatus.SUCCEEDED


class TestCrashOnly:
    async def test_a_launch_repeated_after_a_crash_adopts_the_running_workers(
        self, make_plane: PlaneFactory, tmp_path: Path
    ) -> None:
        """The server launched a gang and died before it recorded the handles: the next
        pass (in a new server) launches again, and gets the same processes back."""
        plane = await make_plane(**TWO_NODES)
        job = await submit(plane, hold(tmp_path / "go", cpu=1).model_copy(update={"workers": 2}))
        await plane.jobs.run_once()
        first = await view(plane, job.id)
        pids = sorted(w.pid for w in first.workers if w.pid)
        assert len(pids) == 2

        # What a repeated launch step sends: the executor must not start anything twice.
        async with plane.db.session() as s:
            row = await s.get(Job, job.id)
            assert row is not None
            workers = sorted((await active_workers(s, [job.id]))[job.id], key=lambda w: w.index)
        states = await asyncio.to_thread(
            plane.executor.launch, gang(row, workers, plane.jobs.config)
        )
        assert sorted(st.pid for st in states if st.pid) == pids

        await plane.jobs.run_once()  # and the reconciler's own view is unchanged
        assert sorted(w.pid for w in (await view(plane, job.id)).workers if w.pid) == pids
        (tmp_path / "go").touch()

        async def done() -> bool:
            return (await view(plane, job.id)).status.is_terminal()

        await step_until(plane, done, "the job to end")
        assert (await view(plane, job.id)).status is JobStatus.SUCCEEDED
