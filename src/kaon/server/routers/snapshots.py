"""Working-directory uploads (tar.gz, content-addressed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from kaon.core.errors import NotFoundError
from kaon.server.deps import CallerDep, DbDep
from kaon.server.services import snapshots

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/snapshots", tags=["snapshots"])


class SnapshotView(BaseModel):
    sha256: str
    size: int


@router.post("", response_model=SnapshotView, status_code=201)
async def upload(workspace: str, request: Request, caller: CallerDep, db: DbDep) -> SnapshotView:
    workspace_id = caller.workspace_id(workspace)
    settings = request.app.state.settings
    sha, size = await snapshots.receive(
        request.stream(), settings.blobs_dir, settings.upload_limit
    )
    async with db.session() as s:
        await snapshots.record(s, workspace_id, sha, size)
    return SnapshotView(sha256=sha, size=size)


@router.head("/{sha256}")
async def exists(workspace: str, sha256: str, caller: CallerDep, db: DbDep) -> Response:
    async with db.session() as s:
        if not await snapshots.exists(s, caller, workspace, sha256):
            raise NotFoundError(f"snapshot {sha256[:12]} not found")
    return Response(status_code=200)
