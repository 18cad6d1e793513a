"""Working-directory uploads (tar.gz, content-addressed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from kaon.server.deps import CallerDep, SessionDep, SettingsDep
from kaon.server.services import snapshots

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/snapshots", tags=["snapshots"])


class SnapshotView(BaseModel):
    sha256: str
    size: int


@router.post("", response_model=SnapshotView, status_code=201)
async def upload(
    workspace: str, request: Request, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> SnapshotView:
    limits = snapshots.UploadLimits(
        packed=settings.upload_limit,
        unpacked=settings.unpacked_limit,
        files=settings.unpacked_files_limit,
    )
    sha, size = await snapshots.upload(
        session, caller, workspace, request.stream(), settings.blobs_dir, limits
    )
    return SnapshotView(sha256=sha, size=size)


@router.head("/{sha256}")
async def exists(workspace: str, sha256: str, caller: CallerDep, session: SessionDep) -> Response:
    await snapshots.require(session, caller, workspace, sha256)
    return Response(status_code=200)
