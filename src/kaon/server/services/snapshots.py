"""Working-directory snapshots: tar.gz archives in the blob store, named by SHA-256.

The client packs a folder and uploads it before it submits the job, so the job runs the
code as it was at submit time. The body is streamed to a temporary file, hashed on the
way, and refused with 413 as soon as it passes the limit: a large upload never sits in
memory. Content addressing makes a second upload of the same folder free.

The compressed size says little about what unpacking writes (a megabyte of gzip can
unpack to a gigabyte of zeros), so before an upload is kept its archive is read through,
headers only, and refused with 413 once the sizes its members declare, or their number,
pass the unpacked limits; what is not a tar.gz at all, and so could never run, is 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import InvalidSpecError, NotFoundError, PayloadTooLargeError
from kaon.core.resources import describe_memory
from kaon.server.db.models import Snapshot
from kaon.server.security.principal import Principal
from kaon.server.services import storage_use


@dataclass(frozen=True)
class UploadLimits:
    """How large a snapshot may be: as uploaded, once unpacked, and in files."""

    packed: int
    unpacked: int = 2 * 2**30
    files: int = 100_000


def snapshot_path(blobs_dir: Path, sha256: str) -> Path:
    return blobs_dir / "snapshots" / sha256[:2] / f"{sha256}.tar.gz"


async def receive(
    chunks: AsyncIterator[bytes], blobs_dir: Path, limits: UploadLimits
) -> tuple[str, int]:
    """Stream an upload into the blob store. Returns (sha256, size)."""
    limit = limits.packed
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
        await asyncio.to_thread(check_archive, Path(tmp_name), limits)
        sha = digest.hexdigest()
        final = snapshot_path(blobs_dir, sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_name, final)
        return sha, size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def check_archive(path: Path, limits: UploadLimits) -> None:
    """413 when the tar.gz at `path` would unpack to more than the limits allow, 422 when
    it is not a tar.gz. Reads member headers in order and stops at the first one over a
    limit, so a bomb is refused before it is inflated."""
    total = files = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                files += 1
                total += max(0, member.size)
                if files > limits.files:
                    raise PayloadTooLargeError(
                        f"the working directory holds over {limits.files} files, the "
                        "server's limit (KAON_UNPACKED_FILES_LIMIT)"
                    )
                if total > limits.unpacked:
                    raise PayloadTooLargeError(
                        "the working directory unpacks to over "
                        f"{describe_memory(limits.unpacked)}, the server's limit "
                        "(KAON_UNPACKED_LIMIT); leave large files out (.kaonignore)"
                    )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise InvalidSpecError(
            f"the upload is not a tar.gz archive of a folder: {e}", field="body"
        ) from e


async def upload(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    chunks: AsyncIterator[bytes],
    blobs_dir: Path,
    limits: UploadLimits,
) -> tuple[str, int]:
    """Receive an upload into the blob store and record it for the workspace."""
    workspace_id = caller.workspace_id(workspace)
    await storage_use.check_room(session, workspace_id, 0)  # already full: before the body
    sha, size = await receive(chunks, blobs_dir, limits)
    if await session.get(Snapshot, (workspace_id, sha)) is None:
        try:
            await storage_use.check_room(session, workspace_id, size)
        except PayloadTooLargeError:
            if await session.scalar(select(Snapshot.sha256).where(Snapshot.sha256 == sha)) is None:
                snapshot_path(blobs_dir, sha).unlink(missing_ok=True)  # no workspace has it
            raise
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
