"""Users, their roles in workspaces, tokens, workspaces and the caller's identity."""

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
from kaon.core.users import CreateUser, MemberView, SetMember, UpdateUser, UserView
from kaon.server.db.models import User
from kaon.server.deps import CallerDep, SessionDep
from kaon.server.services import auth

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.get("/whoami", response_model=WhoAmI)
async def whoami(caller: CallerDep, session: SessionDep) -> WhoAmI:
    user = await session.get(User, caller.user_id) if caller.user_id else None
    return WhoAmI(
        token=caller.name,
        role=caller.role,
        workspaces=sorted(caller.workspaces),
        user=user.name if user else None,
        roles=caller.roles,
    )


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


@router.post("/users", response_model=UserView, status_code=201)
async def create_user(body: CreateUser, caller: CallerDep, session: SessionDep) -> UserView:
    return await auth.create_user(session, caller, body.name, body.is_admin)


@router.get("/users", response_model=list[UserView])
async def list_users(caller: CallerDep, session: SessionDep) -> list[UserView]:
    return await auth.list_users(session, caller)


@router.patch("/users/{name}", response_model=UserView)
async def update_user(
    name: str, body: UpdateUser, caller: CallerDep, session: SessionDep
) -> UserView:
    """Disable a user (its tokens are refused until it is enabled again), or enable it."""
    return await auth.set_disabled(session, caller, name, body.disabled)


@router.delete("/users/{name}", response_model=UserView)
async def delete_user(name: str, caller: CallerDep, session: SessionDep) -> UserView:
    return await auth.delete_user(session, caller, name)


@router.get("/workspaces/{workspace}/members", response_model=list[MemberView])
async def list_members(workspace: str, caller: CallerDep, session: SessionDep) -> list[MemberView]:
    return await auth.list_members(session, caller, workspace)


@router.put("/workspaces/{workspace}/members/{name}", response_model=MemberView)
async def set_member(
    workspace: str, name: str, body: SetMember, caller: CallerDep, session: SessionDep
) -> MemberView:
    """Add the user `name` to the workspace, or change its role there."""
    return await auth.set_member(session, caller, workspace, name, body.role)


@router.delete("/workspaces/{workspace}/members/{name}", response_model=MemberView)
async def remove_member(
    workspace: str, name: str, caller: CallerDep, session: SessionDep
) -> MemberView:
    """Take the user `name` out of the workspace."""
    return await auth.remove_member(session, caller, workspace, name)
