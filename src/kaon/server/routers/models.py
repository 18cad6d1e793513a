"""The model registry of a workspace: models, their immutable versions, their aliases."""

from __future__ import annotations

from fastapi import APIRouter

from kaon.core.registry import ModelVersionView, ModelView, RegisterModel, SetAlias
from kaon.server.deps import CallerDep, DbDep, ExecutorDep, SessionDep, WakeDep
from kaon.server.services import models

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/models", tags=["models"])


@router.get("", response_model=list[ModelView])
async def list_models(workspace: str, caller: CallerDep, session: SessionDep) -> list[ModelView]:
    return await models.list_models(session, caller, workspace)


@router.get("/{name}", response_model=ModelView)
async def get_model(
    workspace: str, name: str, caller: CallerDep, session: SessionDep
) -> ModelView:
    return await models.get_model(session, caller, workspace, name)


@router.post("/{name}/versions", response_model=ModelVersionView, status_code=201)
async def register(
    workspace: str,
    name: str,
    body: RegisterModel,
    caller: CallerDep,
    db: DbDep,
    session: SessionDep,
    executor: ExecutorDep,
    wake: WakeDep,
) -> ModelVersionView:
    return await models.register(
        db, session, caller, workspace, name, body, executor.checkpoint_dir, wake
    )


@router.delete("/{name}/versions/{version}", response_model=ModelVersionView)
async def delete_version(
    workspace: str, name: str, version: int, caller: CallerDep, session: SessionDep
) -> ModelVersionView:
    return await models.delete_version(session, caller, workspace, name, version)


@router.put("/{name}/aliases/{alias}", response_model=ModelView)
async def set_alias(
    workspace: str,
    name: str,
    alias: str,
    body: SetAlias,
    caller: CallerDep,
    db: DbDep,
    session: SessionDep,
    wake: WakeDep,
) -> ModelView:
    return await models.set_alias(db, session, caller, workspace, name, alias, body.version, wake)


@router.delete("/{name}/aliases/{alias}", response_model=ModelView)
async def remove_alias(
    workspace: str, name: str, alias: str, caller: CallerDep, session: SessionDep
) -> ModelView:
    return await models.remove_alias(session, caller, workspace, name, alias)
