"""Jobs: submit, list, get, cancel, logs, metrics. A job is named by its id or a unique
prefix of it (the service resolves it: 404 for none, 409 for several)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from kaon.core.jobs import MAX_WORKERS, JobSpec, JobStatus, JobView, MetricBatch, MetricView
from kaon.core.usage import JobUsage
from kaon.server.deps import CallerDep, DbDep, ExecutorDep, SessionDep, SettingsDep, WakeDep
from kaon.server.security.principal import bearer
from kaon.server.services import jobs, logs, usage

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/jobs", tags=["jobs"])
report_router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
TEXT = "text/plain; charset=utf-8"
JobId = Annotated[str, Path(description="a job id, or a unique prefix of one")]


@router.post("", response_model=JobView, status_code=201)
async def submit(
    workspace: str,
    spec: JobSpec,
    caller: CallerDep,
    session: SessionDep,
    wake: WakeDep,
    settings: SettingsDep,
) -> JobView:
    limits = jobs.JobLimits(settings.max_workers_per_job, settings.max_queued_jobs)
    return await jobs.submit(session, caller, workspace, spec, wake, limits)


@router.get("", response_model=list[JobView])
async def list_jobs(
    workspace: str,
    caller: CallerDep,
    session: SessionDep,
    response: Response,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="X-Next-Cursor of the page before")] = None,
) -> list[JobView]:
    """Newest first, one page at a time: the `X-Next-Cursor` header names the next page
    (absent on the last) and `X-Total-Count` counts every job the filter matches."""
    page = await jobs.list_page(session, caller, workspace, status or (), limit, cursor)
    if page.next_cursor is not None:
        response.headers["X-Next-Cursor"] = page.next_cursor
    response.headers["X-Total-Count"] = str(page.total)
    return page.jobs


@router.get("/{job_id}", response_model=JobView)
async def get(workspace: str, job_id: JobId, caller: CallerDep, session: SessionDep) -> JobView:
    return await jobs.get(session, caller, workspace, job_id)


@router.post("/{job_id}/cancel", response_model=JobView)
async def cancel(
    workspace: str, job_id: JobId, caller: CallerDep, session: SessionDep, wake: WakeDep
) -> JobView:
    return await jobs.cancel(session, caller, workspace, job_id, wake)


@router.get("/{job_id}/metrics", response_model=list[MetricView])
async def metrics(
    workspace: str, job_id: JobId, caller: CallerDep, session: SessionDep, name: str | None = None
) -> list[MetricView]:
    return await jobs.metrics(session, caller, workspace, job_id, name)


@router.get("/{job_id}/usage", response_model=JobUsage)
async def job_usage(
    workspace: str, job_id: JobId, caller: CallerDep, session: SessionDep
) -> JobUsage:
    """CPU, memory and GPU use of each worker over time, sampled by its supervisor; kept
    for the server's retention after the job ends."""
    return await usage.job_usage(session, caller, workspace, job_id)


@router.get("/{job_id}/logs")
async def job_logs(
    workspace: str,
    job_id: JobId,
    caller: CallerDep,
    db: DbDep,
    executor: ExecutorDep,
    worker: Annotated[int, Query(ge=0, lt=MAX_WORKERS)] = 0,
    offset: Annotated[int, Query(ge=0)] = 0,
    follow: bool = False,
) -> StreamingResponse:
    """A worker's log as plain text; with `follow`, streamed until the job ends."""
    chunks = await logs.job_log(db, executor, caller, workspace, job_id, worker, offset, follow)
    return StreamingResponse(chunks, media_type=TEXT)


@report_router.post("/{job_id}/metrics", status_code=202)
async def report(
    job_id: str,
    batch: MetricBatch,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, int]:
    """Where `kaon.report` inside a job sends its values (job token only)."""
    return {"stored": await jobs.add_metrics(session, job_id, bearer(authorization), batch)}
