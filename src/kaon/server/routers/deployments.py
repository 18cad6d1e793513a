"""Deployments: create, read, update, delete, tokens, logs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from kaon.core.deployments import (
    CreateDeploymentToken,
    DeploymentSpec,
    DeploymentTokenCreated,
    DeploymentView,
)
from kaon.server.deps import CallerDep, DbDep, ExecutorDep, SessionDep, WakeDep
from kaon.server.routers.jobs import TEXT
from kaon.server.services import deployments, logs

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/deployments", tags=["deployments"])


@router.post("", response_model=DeploymentView, status_code=201)
async def create(
    workspace: str,
    spec: DeploymentSpec,
    caller: CallerDep,
    db: DbDep,
    session: SessionDep,
    executor: ExecutorDep,
    wake: WakeDep,
) -> DeploymentView:
    return await deployments.create(
        session, caller, workspace, spec, executor.checkpoint_dir, wake, db=db
    )


@router.get("", response_model=list[DeploymentView])
async def list_(workspace: str, caller: CallerDep, session: SessionDep) -> list[DeploymentView]:
    return await deployments.list_deployments(session, caller, workspace)


@router.get("/{name}", response_model=DeploymentView)
async def get(workspace: str, name: str, caller: CallerDep, session: SessionDep) -> DeploymentView:
    return await deployments.get(session, caller, workspace, name)


@router.put("/{name}", response_model=DeploymentView)
async def update(
    workspace: str,
    name: str,
    spec: DeploymentSpec,
    caller: CallerDep,
    db: DbDep,
    session: SessionDep,
    executor: ExecutorDep,
    wake: WakeDep,
) -> DeploymentView:
    return await deployments.update(
        session, caller, workspace, name, spec, executor.checkpoint_dir, wake, db=db
    )


@router.delete("/{name}", response_model=DeploymentView)
async def delete(
    workspace: str, name: str, caller: CallerDep, session: SessionDep, wake: WakeDep
) -> DeploymentView:
    return await deployments.delete(session, caller, workspace, name, wake)


@router.post("/{name}/tokens", response_model=DeploymentTokenCreated, status_code=201)
async def create_token(
    workspace: str,
    name: str,
    body: CreateDeploymentToken,
    caller: CallerDep,
    session: SessionDep,
) -> DeploymentTokenCreated:
    return await deployments.create_token(session, caller, workspace, name, body.name)


@router.get("/{name}/logs")
async def replica_logs(
    workspace: str,
    name: str,
    caller: CallerDep,
    db: DbDep,
    executor: ExecutorDep,
    replica: str | None = None,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StreamingResponse:
    """A replica's log (the newest ready or crashed replica's when none is named)."""
    chunks = await logs.replica_log(db, executor, caller, workspace, name, replica, offset, follow)
    return StreamingResponse(chunks, media_type=TEXT)
