"""Secrets of a workspace (names and versions only ever leave), the values a job's
supervisor fetches with its job token, and the master key's rotation (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from kaon.core.secrets import RotationResult, SecretView, SetSecret
from kaon.server.deps import CallerDep, DbDep, SessionDep
from kaon.server.security.audit import note_caller
from kaon.server.security.principal import bearer
from kaon.server.services import secrets

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/secrets", tags=["secrets"])
worker_router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
admin_router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.put("/{name}", response_model=SecretView)
async def put_secret(
    workspace: str, name: str, body: SetSecret, caller: CallerDep, db: DbDep, session: SessionDep
) -> SecretView:
    ring = secrets.ring_for(db)
    return await secrets.put_secret(session, ring, caller, workspace, name, body.value)


@router.get("", response_model=list[SecretView])
async def list_secrets(workspace: str, caller: CallerDep, session: SessionDep) -> list[SecretView]:
    return await secrets.list_secrets(session, caller, workspace)


@router.delete("/{name}", response_model=SecretView)
async def delete_secret(
    workspace: str, name: str, caller: CallerDep, session: SessionDep
) -> SecretView:
    return await secrets.delete_secret(session, caller, workspace, name)


@worker_router.post("/{job_id}/secrets")
async def resolve_secrets(
    job_id: str,
    db: DbDep,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, dict[str, str]]:
    """The values of the secrets a job's env references, for its workers' supervisor
    (the job's own token only, while the job runs)."""
    note_caller(f"job:{job_id}", None)
    env = await secrets.resolve_for_worker(
        session, secrets.ring_for(db), job_id, bearer(authorization)
    )
    return {"env": env}


@admin_router.post("/rotate-master-key", response_model=RotationResult)
async def rotate_master_key(caller: CallerDep, db: DbDep) -> RotationResult:
    return await secrets.rotate_master_key(db, secrets.ring_for(db), caller)
