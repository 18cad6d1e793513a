"""Tokens, workspaces and the caller's identity."""

from __future__ import annotations

from fastapi import APIRouter

from kaon.core.auth import (
    CreatedToken,
    CreateToken,
    CreateWorkspace,
    DeploymentTokenView,
    TokenView,
    WhoAmI,
    WorkspaceView,
)
from kaon.server.deps import CallerDep, SessionDep
from kaon.server.services import auth

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.get("/whoami", response_model=WhoAmI)
async def whoami(caller: CallerDep) -> WhoAmI:
    return WhoAmI(token=caller.name, role=caller.role, workspaces=sorted(caller.workspaces))


@router.post("/tokens", response_model=CreatedToken, status_code=201)
async def create_token(body: CreateToken, caller: CallerDep, session: SessionDep) -> CreatedToken:
    return await auth.create_token(session, caller, body)


@router.get("/tokens", response_model=list[TokenView])
async def list_tokens(caller: CallerDep, session: SessionDep) -> list[TokenView]:
    return await auth.list_tokens(session, caller)


@router.delete("/tokens/{ref}", response_model=TokenView)
async def revoke_token(ref: str, caller: CallerDep, session: SessionDep) -> TokenView:
    return await auth.revoke_token(session, caller, ref)


@router.post("/workspaces", response_model=WorkspaceView, status_code=201)
async def create_workspace(
    body: CreateWorkspace, caller: CallerDep, session: SessionDep
) -> WorkspaceView:
    return await auth.create_workspace(session, caller, body.name)


@router.get("/workspaces", response_model=list[WorkspaceView])
async def list_workspaces(caller: CallerDep, session: SessionDep) -> list[WorkspaceView]:
    return await auth.list_workspaces(session, caller)


@router.get(
    "/workspaces/{workspace}/deployments/{name}/tokens", response_model=list[DeploymentTokenView]
)
async def list_deployment_tokens(
    workspace: str, name: str, caller: CallerDep, session: SessionDep
) -> list[DeploymentTokenView]:
    return await auth.list_deployment_tokens(session, caller, workspace, name)


@router.delete(
    "/workspaces/{workspace}/deployments/{name}/tokens/{ref}", response_model=DeploymentTokenView
)
async def revoke_deployment_token(
    workspace: str, name: str, ref: str, caller: CallerDep, session: SessionDep
) -> DeploymentTokenView:
    return await auth.revoke_deployment_token(session, caller, workspace, name, ref)
