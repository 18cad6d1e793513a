"""Working-directory snapshots: tar.gz archives in the blob store, named by SHA-256.

The client packs a folder and uploads it before it submits the job, so the job runs the
code as it was at submit time. The body is streamed to a temporary file, hashed on the
way, and refused with 413 as soon as it passes the limit: a large upload never sits in
memory. Content addressing makes a second upload of the same folder free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import InvalidSpecError, NotFoundError, PayloadTooLargeError
from kaon.server.db.models import Snapshot
from kaon.server.security.principal import Principal


def snapshot_path(blobs_dir: Path, sha256: str) -> Path:
    return blobs_dir / "snapshots" / sha256[:2] / f"{sha256}.tar.gz"


async def receive(chunks: AsyncIterator[bytes], blobs_dir: Path, limit: int) -> tuple[str, int]:
    """Stream an upload into the blob store. Returns (sha256, size)."""
    tmp_dir = blobs_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(
                        f"the working directory is over the upload limit of {limit} bytes; "
                        "leave large files out (.kaonignore) or raise KAON_UPLOAD_LIMIT"
                    )
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise InvalidSpecError("the upload is empty", field="body")
        sha = digest.hexdigest()
        final = snapshot_path(blobs_dir, sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_name, final)
        return sha, size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


async def upload(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    chunks: AsyncIterator[bytes],
    blobs_dir: Path,
    limit: int,
) -> tuple[str, int]:
    """Receive an upload into the blob store and record it for the workspace."""
    workspace_id = caller.workspace_id(workspace)
    sha, size = await receive(chunks, blobs_dir, limit)
    if await session.get(Snapshot, (workspace_id, sha)) is None:
        session.add(Snapshot(workspace_id=workspace_id, sha256=sha, size=size))
        await session.commit()
    return sha, size


async def require(session: AsyncSession, caller: Principal, workspace: str, sha: str) -> None:
    """404 unless the workspace has this snapshot (so a client uploads it only once)."""
    if await session.get(Snapshot, (caller.workspace_id(workspace), sha)) is None:
        raise NotFoundError(f"snapshot {sha[:12]} not found")


async def require_for_spec(session: AsyncSession, workspace_id: str, sha: str | None) -> None:
    """422 naming ``snapshot`` when a spec names code that was not uploaded here."""
    if sha is not None and await session.get(Snapshot, (workspace_id, sha)) is None:
        raise InvalidSpecError(
            f"snapshot {sha[:12]} was not uploaded to this workspace", field="snapshot"
        )
