"""What a workspace stores, against its storage limit (its quota's, else the default)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from kaon.server.deps import CallerDep, SessionDep, SettingsDep
from kaon.server.services import storage_use

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/storage", tags=["storage"])


class StorageView(BaseModel):
    workspace: str
    used: int  # bytes: blobs and snapshots together
    blobs: int  # artifact blobs, as stored
    snapshots: int  # code snapshots, as uploaded
    limit: int  # past this, uploads are refused with 413


@router.get("", response_model=StorageView)
async def get_storage(
    workspace: str, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> StorageView:
    workspace_id = caller.workspace_id(workspace)
    use = await storage_use.stored(session, workspace_id)
    limit = await storage_use.limit_of(session, workspace_id)
    return StorageView(
        workspace=workspace,
        used=use.total,
        blobs=use.blobs,
        snapshots=use.snapshots,
        limit=settings.workspace_storage_limit if limit is None else limit.bytes,
    )
