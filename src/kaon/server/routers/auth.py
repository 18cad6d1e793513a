"""Tokens, workspaces and the caller's identity."""

from __future__ import annotations

from fastapi import APIRouter

from kaon.core.auth import (
    CreatedToken,
    CreateToken,
    CreateWorkspace,
    TokenView,
    WhoAmI,
    WorkspaceView,
)
from kaon.server.deps import CallerDep, DbDep
from kaon.server.services import auth

router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.get("/whoami", response_model=WhoAmI)
async def whoami(caller: CallerDep) -> WhoAmI:
    return WhoAmI(token=caller.name, role=caller.role, workspaces=sorted(caller.workspaces))


@router.post("/tokens", response_model=CreatedToken, status_code=201)
async def create_token(body: CreateToken, caller: CallerDep, db: DbDep) -> CreatedToken:
    async with db.session() as s:
        return await auth.create_token(s, caller, body)


@router.get("/tokens", response_model=list[TokenView])
async def list_tokens(caller: CallerDep, db: DbDep) -> list[TokenView]:
    async with db.session() as s:
        return await auth.list_tokens(s, caller)


@router.delete("/tokens/{ref}", response_model=TokenView)
async def revoke_token(ref: str, caller: CallerDep, db: DbDep) -> TokenView:
    async with db.session() as s:
        return await auth.revoke_token(s, caller, ref)


@router.post("/workspaces", response_model=WorkspaceView, status_code=201)
async def create_workspace(body: CreateWorkspace, caller: CallerDep, db: DbDep) -> WorkspaceView:
    async with db.session() as s:
        return await auth.create_workspace(s, caller, body.name)


@router.get("/workspaces", response_model=list[WorkspaceView])
async def list_workspaces(caller: CallerDep, db: DbDep) -> list[WorkspaceView]:
    async with db.session() as s:
        return await auth.list_workspaces(s, caller)
