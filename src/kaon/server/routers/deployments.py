"""Deployments, and the two endpoints the gateway uses."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from kaon.core.deployment_views import (
    CreateDeploymentToken,
    DeploymentTokenCreated,
    DeploymentView,
)
from kaon.core.deployments import DeploymentSpec, GatewayReport, RouteTable
from kaon.core.errors import PermissionDeniedError
from kaon.server.deps import CallerDep, DbDep, ExecutorDep
from kaon.server.routers.jobs import logs as job_logs
from kaon.server.services import deployments
from kaon.server.services.auth import Principal

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/deployments", tags=["deployments"])
gateway_router = APIRouter(prefix="/api/v1/gateway", tags=["gateway"])


def _poke(request: Request) -> None:
    request.app.state.deployment_reconciler.poke()


@router.post("", response_model=DeploymentView, status_code=201)
async def create(
    workspace: str,
    spec: DeploymentSpec,
    request: Request,
    caller: CallerDep,
    db: DbDep,
    executor: ExecutorDep,
) -> DeploymentView:
    async with db.session() as s:
        view = await deployments.create(s, caller, workspace, spec, executor.checkpoint_dir)
    _poke(request)
    return view


@router.get("", response_model=list[DeploymentView])
async def list_(workspace: str, caller: CallerDep, db: DbDep) -> list[DeploymentView]:
    async with db.session() as s:
        return await deployments.list_deployments(s, caller, workspace)


@router.get("/{name}", response_model=DeploymentView)
async def get(workspace: str, name: str, caller: CallerDep, db: DbDep) -> DeploymentView:
    async with db.session() as s:
        return await deployments.get(s, caller, workspace, name)


@router.put("/{name}", response_model=DeploymentView)
async def update(
    workspace: str,
    name: str,
    spec: DeploymentSpec,
    request: Request,
    caller: CallerDep,
    db: DbDep,
    executor: ExecutorDep,
) -> DeploymentView:
    async with db.session() as s:
        view = await deployments.update(s, caller, workspace, name, spec, executor.checkpoint_dir)
    _poke(request)
    return view


@router.delete("/{name}", response_model=DeploymentView)
async def delete(
    workspace: str, name: str, request: Request, caller: CallerDep, db: DbDep
) -> DeploymentView:
    async with db.session() as s:
        view = await deployments.delete(s, caller, workspace, name)
    _poke(request)
    return view


@router.post("/{name}/tokens", response_model=DeploymentTokenCreated, status_code=201)
async def create_token(
    workspace: str, name: str, body: CreateDeploymentToken, caller: CallerDep, db: DbDep
) -> DeploymentTokenCreated:
    async with db.session() as s:
        return await deployments.create_token(s, caller, workspace, name, body.name)


@router.get("/{name}/logs")
async def logs(
    workspace: str,
    name: str,
    caller: CallerDep,
    db: DbDep,
    executor: ExecutorDep,
    replica: str | None = None,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StreamingResponse:
    """A replica's log (the newest replica's when none is named)."""
    async with db.session() as s:
        job_id = await deployments.replica_job(s, caller, workspace, name, replica)
    return await job_logs(workspace, job_id, caller, db, executor, 0, offset, follow)


def _require_gateway(caller: Principal) -> None:
    if caller.role not in ("admin", "gateway"):
        raise PermissionDeniedError("this needs a gateway or admin token")


@gateway_router.get("/routes", response_model=RouteTable)
async def routes(request: Request, caller: CallerDep, db: DbDep) -> RouteTable:
    """Every deployment and its ready replicas, for the gateways to poll."""
    _require_gateway(caller)
    async with db.session() as s:
        table = await deployments.route_table(s, 0)
    versions: RouteVersions = request.app.state.route_versions
    return versions.stamp(table)


@gateway_router.post("/report", status_code=204)
async def report(body: GatewayReport, request: Request, caller: CallerDep) -> Response:
    """Load as a gateway saw it; a 'demand' report wakes the autoscaler at once."""
    _require_gateway(caller)
    request.app.state.load_board.record(body)
    if body.reason == "demand":
        _poke(request)
    return Response(status_code=204)


class RouteVersions:
    """Numbers route tables so that a gateway can skip an unchanged one."""

    def __init__(self) -> None:
        self.version = 0
        self._last = ""

    def stamp(self, table: RouteTable) -> RouteTable:
        content = json.dumps(table.model_dump(mode="json")["routes"], sort_keys=True)
        if content != self._last:
            self._last = content
            self.version += 1
        return table.model_copy(update={"version": self.version})
