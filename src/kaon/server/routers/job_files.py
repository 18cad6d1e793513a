"""A job's code and checkpoint files, for the nodes that run its workers (job token only).

Worker nodes of a remote executor (Ray) share no disk with the control plane: they fetch
the code here and mirror the checkpoint folder here (`kaon.executors.node_sync`).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse

from kaon.executors.node_sync import SHA256_HEADER
from kaon.server.deps import DbDep, PlaneDep, SettingsDep
from kaon.server.security.principal import bearer
from kaon.server.services import job_files
from kaon.server.services.job_files import CheckpointFile, Download

router = APIRouter(prefix="/api/v1/jobs/{job_id}", tags=["job files"])

UPLOAD_PATH = re.compile(r"/api/v1/jobs/[^/]+/checkpoints/.+")
"""Checkpoint uploads: streamed to disk under their own limit, not the JSON body limit."""


def _token_key(plane: PlaneDep) -> bytes:
    return plane.jobs.config.token_key


TokenKeyDep = Annotated[bytes, Depends(_token_key)]
AuthorizationHeader = Annotated[str | None, Header()]


def _stream(found: Download, media_type: str) -> StreamingResponse:
    headers = {"Content-Length": str(found.size)}
    if found.sha256:
        headers[SHA256_HEADER] = found.sha256
    return StreamingResponse(found.chunks, media_type=media_type, headers=headers)


@router.get(
    "/code",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
async def code(
    job_id: str, db: DbDep, settings: SettingsDep, authorization: AuthorizationHeader = None
) -> StreamingResponse:
    """The job's code snapshot (tar.gz). The current attempt's token only."""
    found = await job_files.code(db, job_id, bearer(authorization), settings.blobs_dir)
    return _stream(found, "application/gzip")


@router.get("/checkpoints", response_model=list[CheckpointFile])
async def list_checkpoints(
    job_id: str,
    db: DbDep,
    settings: SettingsDep,
    key: TokenKeyDep,
    authorization: AuthorizationHeader = None,
) -> list[CheckpointFile]:
    """Every file of the job's checkpoint folder with its size and SHA-256, by path."""
    return await job_files.list_checkpoints(
        db, key, job_id, bearer(authorization), settings.checkpoints_dir
    )


@router.get(
    "/checkpoints/{path:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def read_checkpoint(
    job_id: str,
    path: str,
    db: DbDep,
    settings: SettingsDep,
    key: TokenKeyDep,
    authorization: AuthorizationHeader = None,
) -> StreamingResponse:
    """One checkpoint file, streamed as it was when opened."""
    found = await job_files.read_checkpoint(
        db, key, job_id, bearer(authorization), settings.checkpoints_dir, path
    )
    return _stream(found, "application/octet-stream")


@router.put("/checkpoints/{path:path}", response_model=CheckpointFile)
async def write_checkpoint(
    job_id: str,
    path: str,
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    key: TokenKeyDep,
    authorization: AuthorizationHeader = None,
    x_kaon_sha256: Annotated[str | None, Header()] = None,
) -> CheckpointFile:
    """Store the body as one file, atomically, when its SHA-256 is ``X-Kaon-Sha256``."""
    length = request.headers.get("content-length")
    return await job_files.write_checkpoint(
        db,
        key,
        job_id,
        bearer(authorization),
        settings.checkpoints_dir,
        path,
        x_kaon_sha256,
        int(length) if length and length.isdigit() else None,
        request.stream(),
        settings.checkpoint_upload_limit,
    )


@router.delete("/checkpoints/{path:path}", status_code=204)
async def delete_checkpoint(
    job_id: str,
    path: str,
    db: DbDep,
    settings: SettingsDep,
    key: TokenKeyDep,
    authorization: AuthorizationHeader = None,
) -> Response:
    """Delete one checkpoint file (and the folders it leaves empty); 204 when not there."""
    await job_files.delete_checkpoint(
        db, key, job_id, bearer(authorization), settings.checkpoints_dir, path
    )
    return Response(status_code=204)
