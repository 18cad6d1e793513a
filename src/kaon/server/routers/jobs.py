"""Jobs: submit, list, get, cancel, logs, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from kaon.core.jobs import JobSpec, JobStatus, JobView, MetricBatch, MetricView
from kaon.server.deps import CallerDep, DbDep, ExecutorDep, JobReconcilerDep, bearer
from kaon.server.services import jobs

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/jobs", tags=["jobs"])
report_router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
FOLLOW_POLL_S = 0.25


@router.post("", response_model=JobView, status_code=201)
async def submit(
    workspace: str, spec: JobSpec, caller: CallerDep, db: DbDep, reconciler: JobReconcilerDep
) -> JobView:
    async with db.session() as s:
        job = await jobs.submit(s, caller, workspace, spec)
    reconciler.poke()
    return job


@router.get("", response_model=list[JobView])
async def list_jobs(
    workspace: str,
    caller: CallerDep,
    db: DbDep,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobView]:
    async with db.session() as s:
        return await jobs.list_jobs(s, caller, workspace, status or (), limit)


@router.get("/{job_id}", response_model=JobView)
async def get(workspace: str, job_id: str, caller: CallerDep, db: DbDep) -> JobView:
    async with db.session() as s:
        return await jobs.get(s, caller, workspace, job_id)


@router.post("/{job_id}/cancel", response_model=JobView)
async def cancel(
    workspace: str, job_id: str, caller: CallerDep, db: DbDep, reconciler: JobReconcilerDep
) -> JobView:
    async with db.session() as s:
        job = await jobs.cancel(s, caller, workspace, job_id)
    reconciler.poke()
    return job


@router.get("/{job_id}/metrics", response_model=list[MetricView])
async def metrics(
    workspace: str, job_id: str, caller: CallerDep, db: DbDep, name: str | None = None
) -> list[MetricView]:
    async with db.session() as s:
        return await jobs.metrics(s, caller, workspace, job_id, name)


@router.get("/{job_id}/logs")
async def logs(
    workspace: str,
    job_id: str,
    caller: CallerDep,
    db: DbDep,
    executor: ExecutorDep,
    worker: Annotated[int, Query(ge=0)] = 0,
    offset: Annotated[int, Query(ge=0)] = 0,
    follow: bool = False,
) -> StreamingResponse:
    """A worker's log as plain text; with `follow`, streamed until the job ends."""
    async with db.session() as s:
        await jobs.worker_handle(s, caller, workspace, job_id, worker)  # 404s early

    async def chunks() -> AsyncIterator[bytes]:
        position = offset
        while True:
            async with db.session() as s:
                job, handle = await jobs.worker_handle(s, caller, workspace, job_id, worker)
            data = await asyncio.to_thread(executor.logs, handle, position) if handle else b""
            if data:
                position += len(data)
                yield data
                continue
            if not follow or JobStatus(job.status).is_terminal():
                return
            await asyncio.sleep(FOLLOW_POLL_S)

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


@report_router.post("/{job_id}/metrics", status_code=202)
async def report(
    job_id: str,
    batch: MetricBatch,
    db: DbDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, int]:
    """Where `kaon.report` inside a job sends its values (job token only)."""
    async with db.session() as s:
        return {"stored": await jobs.add_metrics(s, job_id, bearer(authorization), batch)}
