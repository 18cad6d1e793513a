"""Artifacts of a workspace: blobs (upload streamed and checked, download decrypted) and
versions made of them (create from a manifest, list, get, delete)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from kaon.core.artifacts import ArtifactView, BlobView, CreateArtifact
from kaon.server.deps import CallerDep, DbDep, SessionDep, SettingsDep
from kaon.server.services import artifacts

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["artifacts"])

UPLOAD_PATH = re.compile(r"/api/v1/workspaces/[^/]+/blobs/[^/]+")
"""Blob uploads: streamed into the store under their own limit, not the JSON body limit."""
SIZE_HEADER = "X-Kaon-Blob-Size"


@router.head("/blobs/{sha256}")
async def head_blob(
    workspace: str, sha256: str, caller: CallerDep, session: SessionDep
) -> Response:
    """200 when the workspace holds the blob (a client skips its upload), else 404."""
    info = await artifacts.blob_info(session, caller, workspace, sha256)
    return Response(headers={SIZE_HEADER: str(info.size)})


@router.put("/blobs/{sha256}", response_model=BlobView)
async def put_blob(
    workspace: str,
    sha256: str,
    request: Request,
    caller: CallerDep,
    db: DbDep,
    session: SessionDep,
    settings: SettingsDep,
    content_length: Annotated[int | None, Header()] = None,
) -> BlobView:
    """Upload a blob's bytes (the body, streamed); the server recomputes the sha256."""
    return await artifacts.put_blob(
        db,
        session,
        caller,
        workspace,
        sha256,
        request.stream(),
        limit=settings.artifact_blob_limit,
        length=content_length,
    )


@router.get(
    "/blobs/{sha256}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_blob(
    workspace: str, sha256: str, caller: CallerDep, db: DbDep, session: SessionDep
) -> StreamingResponse:
    """The blob's plaintext, decrypted and verified as it streams."""
    info, chunks = await artifacts.read_blob(db, session, caller, workspace, sha256)
    headers = {"Content-Length": str(info.size)}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.post("/artifacts/{name}", response_model=ArtifactView, status_code=201)
async def create_artifact(
    workspace: str, name: str, body: CreateArtifact, caller: CallerDep, session: SessionDep
) -> ArtifactView:
    """The next version of an artifact, from a manifest of uploaded blobs."""
    return await artifacts.create_version(session, caller, workspace, name, body)


@router.get("/artifacts", response_model=list[ArtifactView])
async def list_artifacts(
    workspace: str,
    caller: CallerDep,
    session: SessionDep,
    name: Annotated[str | None, Query()] = None,
) -> list[ArtifactView]:
    return await artifacts.list_artifacts(session, caller, workspace, name)


@router.get("/artifacts/{ref}", response_model=ArtifactView)
async def get_artifact(
    workspace: str, ref: str, caller: CallerDep, session: SessionDep
) -> ArtifactView:
    """One version (``name`` for the latest, or ``name:3``) with its manifest."""
    return await artifacts.get_artifact(session, caller, workspace, ref)


@router.delete("/artifacts/{ref}", response_model=ArtifactView)
async def delete_artifact(
    workspace: str, ref: str, caller: CallerDep, db: DbDep, session: SessionDep
) -> ArtifactView:
    """Delete one version (``name:3``) and the blobs no other version uses."""
    return await artifacts.delete_version(db, session, caller, workspace, ref)
