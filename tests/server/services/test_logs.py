"""Reading a worker's log: errors come before the answer starts, or as a last line,
never as a cut connection."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import pytest

from kaon.core.errors import InvalidSpecError, TemporaryBackendError
from kaon.core.jobs import JobSpec, JobStatus
from kaon.executors.base import Executor
from kaon.server.context import ControlPlane
from kaon.server.services import logs
from tests.server.conftest import PlaneFactory, admin, step_until, submit, view


class FailingAfter:
    """The plane's executor, whose log reads fail after `reads` good ones: a node whose
    agent stops answering half-way through a long log."""

    def __init__(self, inner: Executor, reads: int) -> None:
        self.inner = inner
        self.reads = reads

    def logs(self, handle: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        if self.reads <= 0:
            raise TemporaryBackendError("the agent on node n9 does not answer")
        self.reads -= 1
        return self.inner.logs(handle, offset, limit=4)  # small reads: several are needed


async def finished_job(plane: ControlPlane) -> str:
    code = "print('0123456789')"
    job = await submit(plane, JobSpec(command=[sys.executable, "-c", code]))

    async def done() -> bool:
        return (await view(plane, job.id)).status is JobStatus.SUCCEEDED

    await step_until(plane, done, "the job to succeed")
    return job.id


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


async def test_an_offset_beyond_any_file_is_bad_input(make_plane: PlaneFactory) -> None:
    plane = await make_plane()
    job_id = await finished_job(plane)
    with pytest.raises(InvalidSpecError) as e:
        await logs.job_log(
            plane.db, plane.executor, await admin(plane), "default", job_id, 0, 10**20
        )
    assert e.value.field == "offset"


async def test_a_log_that_cannot_be_read_fails_before_the_answer(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    job_id = await finished_job(plane)
    broken = FailingAfter(plane.executor, reads=0)
    with pytest.raises(TemporaryBackendError, match="does not answer"):
        await logs.job_log(plane.db, broken, await admin(plane), "default", job_id)  # type: ignore[arg-type]


async def test_a_read_that_fails_half_way_ends_with_a_line_saying_so(
    make_plane: PlaneFactory,
) -> None:
    plane = await make_plane()
    job_id = await finished_job(plane)
    broken = FailingAfter(plane.executor, reads=2)
    chunks = await logs.job_log(plane.db, broken, await admin(plane), "default", job_id)  # type: ignore[arg-type]
    text = (await read_all(chunks)).decode()
    assert text.startswith("01234567")  # what was read is kept
    assert text.endswith(
        "[kaon] the rest of this log cannot be read now: the agent on node n9 does not answer\n"
    )
