"""Artifacts: versioned folders of a workspace, kept as encrypted, content-addressed blobs.

```
 kaon artifact push NAME PATH
   HEAD  .../blobs/{sha256}      present? skip            (dedup within the workspace)
   PUT   .../blobs/{sha256}      stream -> seal -> store    (sha256 recomputed, else 422)
   POST  .../artifacts/{name}    manifest -> version n+1   (every blob present, else 422)
```

A blob's value is sealed with its workspace's data key as it streams in
(`kaon.server.storage.sealed`) and stored under ``<workspace id>/<sha256>``; the ``blobs``
row is written only after the value is whole and its sha256 checked, so a row always
means a readable blob. Reading opens and re-hashes it on the way out. A version's row
holds its manifest; ``artifact_blobs`` says which blobs it names, so deleting a version
deletes, after the row, exactly the blobs no remaining version names.

The other side of the control plane uses four calls: `store_folder` (keep a local folder
as the next version: a job's outputs), `find` (``name`` or ``name:3``), `materialise`
(a verified, read-only copy in this node's cache, named by the version's digest, made
once) and `store_for`. Blob store I/O always runs in worker threads, never in the event
loop and never inside a database transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.artifacts import (
    ArtifactKind,
    ArtifactView,
    BlobView,
    CreateArtifact,
    JobInput,
    ManifestEntry,
    check_artifact_name,
    manifest_digest,
    parse_ref,
)
from kaon.core.errors import (
    ConflictError,
    InvalidSpecError,
    NotFoundError,
    PayloadTooLargeError,
    PermanentBackendError,
    TemporaryBackendError,
)
from kaon.core.jobs import JobStatus
from kaon.core.pools import LOCAL_POOL
from kaon.core.validation import is_sha256
from kaon.executors.base import Executor
from kaon.executors.local import LocalExecutor
from kaon.executors.pools import Pools
from kaon.server.db.models import (
    Artifact,
    ArtifactBlob,
    Blob,
    Job,
    Model,
    ModelVersion,
    Node,
    Workspace,
    utcnow,
)
from kaon.server.db.session import Database
from kaon.server.security.audit import AuditEntry, current
from kaon.server.security.principal import Principal
from kaon.server.security.tokens import new_id
from kaon.server.services import audit, storage_use
from kaon.server.services.pool import stored_spec
from kaon.server.services.secrets import ring_for, workspace_data_key
from kaon.server.storage.blobstore import CHUNK, BlobStore
from kaon.server.storage.sealed import (
    HashMismatchError,
    TamperedBlobError,
    open_value,
    seal_value,
)
from kaon.server.storage.streams import to_async_iter, to_thread_iter

VERSION_TRIES = 5  # concurrent creates of one name: retry on the unique version


@dataclass(frozen=True)
class ArtifactStore:
    """Where a control plane keeps blob values, and this node's cache of opened versions."""

    blobs: BlobStore
    cache_dir: Path


_STORES: weakref.WeakKeyDictionary[Database, ArtifactStore] = weakref.WeakKeyDictionary()


def attach_store(db: Database, store: BlobStore, cache_dir: Path) -> None:
    """Make `store` the blob store of the control plane that owns `db` (once, by
    `build_plane`), as `attach_keys` does for the key ring."""
    _STORES[db] = ArtifactStore(store, cache_dir)


def store_for(db: Database) -> ArtifactStore:
    return _STORES[db]


def blob_key(workspace_id: str, sha256: str) -> str:
    return f"{workspace_id}/{sha256}"


# --- views and lookups ---------------------------------------------------------------------


def view_of(row: Artifact, workspace: str, with_files: bool = False) -> ArtifactView:
    files = [ManifestEntry.model_validate(e) for e in row.manifest] if with_files else None
    return ArtifactView(
        name=row.name,
        version=row.version,
        workspace=workspace,
        kind=ArtifactKind(row.kind),
        size=row.size,
        file_count=len(row.manifest),
        digest=row.digest,
        source_job_id=row.source_job_id,
        created_by=row.created_by,
        created_at=row.created_at,
        metadata=row.metadata_,
        files=files,
    )


def _check_sha(sha256: str) -> str:
    if not is_sha256(sha256):
        raise InvalidSpecError("sha256 must be 64 lowercase hex digits", field="sha256")
    return sha256


async def find(session: AsyncSession, workspace_id: str, ref: str) -> Artifact:
    """The version `ref` names: ``name`` (the latest) or ``name:VERSION``; NotFoundError
    naming the ref (InvalidSpecError for a ref that is not one)."""
    try:
        name, version = parse_ref(ref)
    except ValueError as e:
        raise InvalidSpecError(str(e), field="ref") from None
    query = select(Artifact).where(Artifact.workspace_id == workspace_id, Artifact.name == name)
    if version is not None:
        query = query.where(Artifact.version == version)
    found = await session.scalar(query.order_by(Artifact.version.desc()).limit(1))
    if found is None:
        raise NotFoundError(f"artifact {ref!r} not found")
    return found


async def _workspace_name(session: AsyncSession, workspace_id: str) -> str:
    name = await session.scalar(select(Workspace.name).where(Workspace.id == workspace_id))
    if name is None:
        raise NotFoundError(f"workspace {workspace_id!r} not found")
    return name


# --- blobs -----------------------------------------------------------------------------------


async def blob_info(
    session: AsyncSession, caller: Principal, workspace: str, sha256: str
) -> BlobView:
    """The blob's sizes; NotFoundError when the workspace has no such blob."""
    workspace_id = caller.workspace_id(workspace)
    row = await session.get(Blob, (workspace_id, _check_sha(sha256)))
    if row is None:
        raise NotFoundError(f"blob {sha256} not found")
    return BlobView(sha256=row.sha256, size=row.size, stored_size=row.stored_size)


async def put_blob(
    db: Database,
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    sha256: str,
    body: AsyncIterator[bytes],
    *,
    limit: int,
    length: int | None = None,
) -> BlobView:
    """Store an uploaded blob: sealed as it streams in, its sha256 recomputed on the way
    (422 naming ``sha256`` on a mismatch, 413 past `limit`, nothing kept either way). A
    blob the workspace has already is not uploaded again (the body is left unread)."""
    workspace_id = caller.workspace_id(workspace)
    _check_sha(sha256)
    if length is not None and length > limit:
        raise _too_large(limit)
    existing = await session.get(Blob, (workspace_id, sha256))
    if existing is not None:
        return BlobView(sha256=sha256, size=existing.size, stored_size=existing.stored_size)
    await storage_use.check_room(session, workspace_id, length or 0)  # before the body
    key = await workspace_data_key(session, ring_for(db), workspace_id)
    await session.commit()  # a data key made just now is kept before anything uses it
    store = store_for(db).blobs
    received, pump = to_thread_iter(body, asyncio.get_running_loop())
    plain = _Counted(received, limit)
    # One pass in one thread: hashed and sealed a MiB at a time, each record written with
    # one call; a mismatch raises before the last record, so the store's atomic write
    # keeps nothing (and never replaces a good value of the same name).
    sealed = seal_value(key, workspace_id, sha256, plain, verify=True)
    try:
        stored = await asyncio.to_thread(store.put, blob_key(workspace_id, sha256), sealed)
    except HashMismatchError as e:
        raise InvalidSpecError(str(e), field="sha256") from None
    finally:
        pump.cancel()  # the body is not read on once the store stopped (413, an error)
    try:
        await storage_use.check_room(session, workspace_id, stored)
    except PayloadTooLargeError:
        await session.rollback()
        await _discard_value(db, workspace_id, sha256)
        raise
    await _add_blob(session, workspace_id, sha256, plain.size, stored)
    await session.commit()
    return BlobView(sha256=sha256, size=plain.size, stored_size=stored)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"blob over the upload limit of {limit} bytes; raise KAON_ARTIFACT_BLOB_LIMIT"
    )


class _Counted:
    """A plaintext stream being sealed: counts it, and stops it at `limit` (the sealer
    hashes it)."""

    def __init__(self, chunks: Iterable[bytes], limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            if self.size > self._limit:
                raise _too_large(self._limit)
            yield chunk


async def _add_blob(
    session: AsyncSession, workspace_id: str, sha256: str, size: int, stored: int
) -> None:
    """The blob's row; a concurrent upload of the same blob that got there first wins."""
    try:
        async with session.begin_nested():
            session.add(
                Blob(workspace_id=workspace_id, sha256=sha256, size=size, stored_size=stored)
            )
    except IntegrityError:
        pass


async def _discard_value(db: Database, workspace_id: str, sha256: str) -> None:
    """Remove a stored value that no row vouches for (a refused or abandoned upload). A
    value with a row is left alone: another upload of the same blob finished meanwhile."""
    async with db.session() as s:
        if await s.get(Blob, (workspace_id, sha256)) is not None:
            return
    await asyncio.to_thread(store_for(db).blobs.delete, blob_key(workspace_id, sha256))


async def read_blob(
    db: Database, session: AsyncSession, caller: Principal, workspace: str, sha256: str
) -> tuple[BlobView, AsyncIterator[bytes]]:
    """The blob's plaintext, opened and verified as it streams (in a thread, a few MiB
    ahead of the network). The first chunk is opened before this returns, so a blob
    damaged at its start fails before any answer starts; damage further in ends the
    stream early, which the client's own sha256 check sees."""
    info = await blob_info(session, caller, workspace, sha256)
    workspace_id = caller.workspace_id(workspace)
    key = await workspace_data_key(session, ring_for(db), workspace_id)
    await session.commit()
    stream = to_async_iter(_open_stream(store_for(db).blobs, key, workspace_id, sha256))
    first = await anext(stream, b"")
    return info, _prepend(first, stream)


def _open_stream(store: BlobStore, key: bytes, workspace_id: str, sha256: str) -> Iterator[bytes]:
    try:
        stored = store.get(blob_key(workspace_id, sha256))
    except KeyError:
        raise TamperedBlobError(f"blob {sha256} is missing from the blob store") from None
    return open_value(key, workspace_id, sha256, stored)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


# --- versions --------------------------------------------------------------------------------


async def create_version(
    session: AsyncSession,
    caller: Principal,
    workspace: str,
    name: str,
    body: CreateArtifact,
    source_job_id: str | None = None,
) -> ArtifactView:
    """The next version of `name`, from blobs already uploaded (422 naming the first
    missing one, or one whose size differs from the manifest's)."""
    workspace_id = caller.workspace_id(workspace)
    _check_name(name)
    await _require_blobs(session, workspace_id, body.files)
    row = await _new_version(
        session,
        workspace_id,
        name,
        kind=body.kind,
        files=body.files,
        created_by=caller.name,
        source_job_id=source_job_id,
        metadata=body.metadata,
    )
    await session.commit()
    return view_of(row, workspace)


def _check_name(name: str) -> str:
    try:
        return check_artifact_name(name)
    except ValueError as e:
        raise InvalidSpecError(str(e), field="name") from None


async def _require_blobs(
    session: AsyncSession, workspace_id: str, files: list[ManifestEntry]
) -> None:
    wanted = {e.sha256 for e in files}
    sizes: dict[str, int] = {}
    for chunk in _batches(sorted(wanted), 500):
        rows = await session.execute(
            select(Blob.sha256, Blob.size)
            .where(Blob.workspace_id == workspace_id, Blob.sha256.in_(chunk))
            .with_for_update(read=True)  # the clean-up cannot take them meanwhile
        )
        sizes.update(rows.tuples().all())
    for i, entry in enumerate(files):
        if entry.sha256 not in sizes:
            raise InvalidSpecError(
                f"{entry.path}: blob {entry.sha256} has not been uploaded to this workspace",
                field=f"files.{i}.sha256",
            )
        if sizes[entry.sha256] != entry.size:
            raise InvalidSpecError(
                f"{entry.path}: size {entry.size} but blob {entry.sha256} holds "
                f"{sizes[entry.sha256]} bytes",
                field=f"files.{i}.size",
            )


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def _new_version(
    session: AsyncSession,
    workspace_id: str,
    name: str,
    *,
    kind: ArtifactKind,
    files: list[ManifestEntry],
    created_by: str,
    source_job_id: str | None,
    metadata: dict[str, Any],
) -> Artifact:
    """Insert version n+1 of `name` (n the newest now); retried when a concurrent create
    took the same number. The caller commits."""
    files = sorted(files, key=lambda e: e.path)
    for _ in range(VERSION_TRIES):
        newest = await session.scalar(
            select(func.max(Artifact.version)).where(
                Artifact.workspace_id == workspace_id, Artifact.name == name
            )
        )
        row = Artifact(
            id=new_id("art"),
            workspace_id=workspace_id,
            name=name,
            version=(newest or 0) + 1,
            kind=kind.value,
            manifest=[e.model_dump() for e in files],
            size=sum(e.size for e in files),
            digest=manifest_digest(files),
            source_job_id=source_job_id,
            created_by=created_by,
            created_at=utcnow(),
            metadata_=metadata,
        )
        try:
            async with session.begin_nested():
                session.add(row)
                await session.flush()
                for sha in sorted({e.sha256 for e in files}):
                    session.add(
                        ArtifactBlob(artifact_id=row.id, sha256=sha, workspace_id=workspace_id)
                    )
        except IntegrityError:
            continue
        return row
    raise InvalidSpecError(f"artifact {name!r}: too many versions created at once; retry")


async def list_artifacts(
    session: AsyncSession, caller: Principal, workspace: str, name: str | None = None
) -> list[ArtifactView]:
    """Every version (of `name`, if given), by name then newest first."""
    workspace_id = caller.workspace_id(workspace)
    query = select(Artifact).where(Artifact.workspace_id == workspace_id)
    if name is not None:
        query = query.where(Artifact.name == name)
    rows = await session.scalars(query.order_by(Artifact.name, Artifact.version.desc()))
    return [view_of(r, workspace) for r in rows]


async def get_artifact(
    session: AsyncSession, caller: Principal, workspace: str, ref: str
) -> ArtifactView:
    """One version with its manifest."""
    workspace_id = caller.workspace_id(workspace)
    return view_of(await find(session, workspace_id, ref), workspace, with_files=True)


async def delete_version(
    db: Database, session: AsyncSession, caller: Principal, workspace: str, ref: str
) -> ArtifactView:
    """Delete one version (``name:VERSION``; a bare name is refused, so a delete never
    guesses). Its row goes, then the blobs no remaining version of the workspace names:
    their rows in the same transaction, their stored values just after it commits."""
    workspace_id = caller.workspace_id(workspace)
    if ":" not in ref:
        raise InvalidSpecError(f"delete needs NAME:VERSION, not {ref!r}", field="ref")
    row = await find(session, workspace_id, ref)
    if not await hold(session, row.id):
        raise NotFoundError(f"artifact {ref!r} not found")
    users = await users_of(session, row)
    if users:
        raise ConflictError(
            f"artifact {row.name}:{row.version} is used by {users[0]}; delete or finish that first"
        )
    view = view_of(row, workspace)
    unused = await _drop_version(session, row)
    await session.commit()
    await _delete_values(db, workspace_id, unused)
    return view


async def hold(session: AsyncSession, artifact_id: str) -> bool:
    """Lock the version's row until the transaction ends (PostgreSQL; SQLite orders every
    write anyway), so a delete and a use of it (a model version registered on it) are
    ordered and each sees the other; False when it is gone."""
    found = await session.scalar(
        select(Artifact.id).where(Artifact.id == artifact_id).with_for_update()
    )
    return found is not None


async def users_of(session: AsyncSession, row: Artifact) -> list[str]:
    """What needs the version now, named for a refusal: the model versions that hold it
    and the jobs not yet ended that read it as an input (pinned ``name:version`` at
    submit). Empty when a delete breaks nothing."""
    users: list[str] = []
    models = await session.execute(
        select(Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.artifact_id == row.id)
        .order_by(Model.name, ModelVersion.version)
    )
    users += [f"model version {m}:{v}" for m, v in models.tuples()]
    ref = f"{row.name}:{row.version}"
    jobs = await session.scalars(
        select(Job)
        .where(Job.workspace_id == row.workspace_id, Job.status.not_in(_ENDED))
        .order_by(Job.id)
    )
    users += [
        f"job {j.id} ({j.status})"
        for j in jobs
        if j.spec.get("inputs") and any(i.artifact == ref for i in stored_spec(j).inputs)
    ]
    return users


_ENDED = [s.value for s in JobStatus if s.is_terminal()]


async def release(session: AsyncSession, artifact_id: str, model: str) -> list[str]:
    """After a model version's row is deleted: delete its artifact too when it was made for
    that model (kind ``model``, pushed or registered as `model`) and nothing else uses it
    (another model version, a job not yet ended). An artifact pushed on its own and
    registered by name stays. Rows only, in the caller's transaction; the stored values
    of the blobs it released go with the clean-up loop's next pass. The names of the
    released blobs (empty when it stays)."""
    if not await hold(session, artifact_id):
        return []
    row = await session.get(Artifact, artifact_id)
    if row is None or row.kind != ArtifactKind.MODEL.value or row.metadata_.get("model") != model:
        return []
    if await users_of(session, row):
        return []
    return await _drop_version(session, row)


async def _drop_version(session: AsyncSession, row: Artifact) -> list[str]:
    """Delete the version's row and the rows of the blobs only it named; their shas."""
    named = set(
        await session.scalars(
            select(ArtifactBlob.sha256).where(ArtifactBlob.artifact_id == row.id)
        )
    )
    await session.execute(delete(ArtifactBlob).where(ArtifactBlob.artifact_id == row.id))
    await session.delete(row)
    await session.flush()
    still: set[str] = set()
    for chunk in _batches(sorted(named), 500):
        still.update(
            await session.scalars(
                select(ArtifactBlob.sha256).where(
                    ArtifactBlob.workspace_id == row.workspace_id, ArtifactBlob.sha256.in_(chunk)
                )
            )
        )
    unused = sorted(named - still)
    for chunk in _batches(unused, 500):
        await session.execute(
            delete(Blob).where(Blob.workspace_id == row.workspace_id, Blob.sha256.in_(chunk))
        )
    return unused


async def _delete_values(db: Database, workspace_id: str, shas: list[str]) -> None:
    for sha in shas:
        await _discard_value(db, workspace_id, sha)


# --- a local folder in, a local copy out -----------------------------------------------------


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    entry: ManifestEntry


def _scan(folder: Path) -> list[_LocalFile]:
    """Every regular file under `folder` with its sha256 (symlinks are not followed)."""
    out: list[_LocalFile] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            rel = path.relative_to(folder).as_posix()
            entry = ManifestEntry(
                path=rel, sha256=_hash_file(path), size=st.st_size, mode=st.st_mode & 0o777
            )
            out.append(_LocalFile(path, entry))
    return out


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _upload_files(
    store: BlobStore, key: bytes, workspace_id: str, files: list[_LocalFile]
) -> dict[str, int]:
    """Seal and store each file's blob once; sha256 -> stored size."""
    stored: dict[str, int] = {}
    for f in files:
        sha = f.entry.sha256
        if sha not in stored:
            sealed = seal_value(key, workspace_id, sha, _read_file(f.path))
            stored[sha] = store.put(blob_key(workspace_id, sha), sealed)
    return stored


async def store_folder(
    db: Database,
    workspace_id: str,
    name: str,
    folder: Path,
    *,
    kind: str,
    created_by: str,
    source_job_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ArtifactView:
    """Keep every file of a local folder as the next version of artifact `name`: blobs the
    workspace lacks are sealed and stored, then the version is created. Outside a request
    (a job's outputs, kept by a reconciler) the creation gets an audit record of its own."""
    _check_name(name)
    try:
        artifact_kind = ArtifactKind(kind)
    except ValueError:
        raise InvalidSpecError(
            f"kind must be one of {[k.value for k in ArtifactKind]}", field="kind"
        ) from None
    files = await asyncio.to_thread(_scan, folder)
    async with db.session() as s:
        key = await workspace_data_key(s, ring_for(db), workspace_id)
        have = await _present(s, workspace_id, {f.entry.sha256 for f in files})
    missing = [f for f in files if f.entry.sha256 not in have]
    stored = await asyncio.to_thread(
        _upload_files, store_for(db).blobs, key, workspace_id, missing
    )
    async with db.session() as s:
        for f in missing:
            sha = f.entry.sha256
            if sha in stored:
                await _add_blob(s, workspace_id, sha, f.entry.size, stored.pop(sha))
        row = await _new_version(
            s,
            workspace_id,
            name,
            kind=artifact_kind,
            files=[f.entry for f in files],
            created_by=created_by,
            source_job_id=source_job_id,
            metadata=metadata or {},
        )
        workspace = await _workspace_name(s, workspace_id)
        if current() is None:
            await _audit(s, workspace, created_by, f"artifacts/{name}:{row.version}")
        return view_of(row, workspace)


async def _present(session: AsyncSession, workspace_id: str, shas: set[str]) -> set[str]:
    have: set[str] = set()
    for chunk in _batches(sorted(shas), 500):
        have.update(
            await session.scalars(
                select(Blob.sha256).where(
                    Blob.workspace_id == workspace_id, Blob.sha256.in_(chunk)
                )
            )
        )
    return have


async def _audit(session: AsyncSession, workspace: str, principal: str, resource: str) -> None:
    entry = AuditEntry(
        time=utcnow(),
        principal=principal,
        token_name=None,
        workspace=workspace,
        action="artifacts.store_folder",
        resource=resource,
        outcome="ok",
        status=201,
        source=None,
    )
    await audit.append(session, entry)


async def materialise(db: Database, artifact: Artifact) -> Path:
    """A local, verified, read-only copy of the version in this node's cache
    (``<cache>/<digest>/``), made once and reused: it is built in a temporary folder,
    every file opened and its sha256 checked, made read-only, then renamed into place, so
    a folder under its digest's name is always whole."""
    store = store_for(db)
    target = store.cache_dir / artifact.digest
    if target.is_dir():
        with contextlib.suppress(OSError):  # its last use, for the cache's LRU eviction
            os.utime(target)
        return target
    async with db.session() as s:
        key = await workspace_data_key(s, ring_for(db), artifact.workspace_id)
    files = [ManifestEntry.model_validate(e) for e in artifact.manifest]
    await asyncio.to_thread(_build, store.blobs, key, artifact.workspace_id, files, target)
    return target


def _build(
    store: BlobStore, key: bytes, workspace_id: str, files: list[ManifestEntry], target: Path
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:12]}-"))
    try:
        for entry in files:
            path = tmp / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                for chunk in _open_stream(store, key, workspace_id, entry.sha256):
                    out.write(chunk)
            os.chmod(path, entry.mode & 0o555)
        _read_only_folders(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another build finished first: its copy is as good
            if not target.is_dir():
                raise
            _remove_tree(tmp)
    except BaseException:
        _remove_tree(tmp)
        raise


def _read_only_folders(root: Path) -> None:
    for folder, dirs, _ in os.walk(root, topdown=False):
        for d in dirs:
            os.chmod(Path(folder) / d, 0o555)
    os.chmod(root, 0o555)


def evict_copy(cache_dir: Path, digest: str) -> None:
    """Remove a version's copy from this node's cache: renamed away first, so a reader
    finds the whole folder or none, then deleted."""
    target = cache_dir / digest
    if not target.is_dir():
        return
    gone = cache_dir / f".evicted-{digest[:12]}-{new_id('x')}"
    try:
        os.rename(target, gone)
    except OSError:
        return
    _remove_tree(gone)


def _remove_tree(root: Path) -> None:
    """Remove a (possibly read-only) tree of this cache."""
    if not root.exists():
        return
    for folder, dirs, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(Path(folder) / d, 0o700)
    shutil.rmtree(root, ignore_errors=True)


# --- jobs: inputs at submit and launch, outputs on success -----------------------------------


async def require_inputs(
    session: AsyncSession, workspace_id: str, inputs: list[JobInput]
) -> list[JobInput]:
    """At submit: every input names a version of the workspace (422 naming the field of
    the first that does not); a bare name is pinned to its latest version now, so every
    attempt of the job reads the same files."""
    pinned: list[JobInput] = []
    for i, item in enumerate(inputs):
        try:
            row = await find(session, workspace_id, item.artifact)
        except NotFoundError:
            raise InvalidSpecError(
                f"input {item.artifact!r} is not an artifact of this workspace; "
                "push it with 'kaon artifact push'",
                field=f"inputs.{i}.artifact",
            ) from None
        pinned.append(item.model_copy(update={"artifact": f"{row.name}:{row.version}"}))
    return pinned


async def inputs_for(db: Database, job: Job, node_ids: list[str]) -> tuple[tuple[str, str], ...]:
    """At launch: each input of the job as (path in the working folder, this node's
    verified read-only copy). Only the local pool links inputs in: a job placed on other
    nodes (a Ray pool) is refused rather than run without its data."""
    inputs = stored_spec(job).inputs
    if not inputs:
        return ()
    async with db.session() as s:
        pools = set(await s.scalars(select(Node.executor).where(Node.id.in_(node_ids))))
        rows = []
        for item in inputs:
            try:
                rows.append(await find(s, job.workspace_id, item.artifact))
            except NotFoundError:
                raise PermanentBackendError(
                    f"input {item.artifact!r} was deleted after the job was submitted"
                ) from None
    if pools - {LOCAL_POOL}:
        raise PermanentBackendError(
            "jobs with inputs run only on the local pool for now: Ray pools do not fetch "
            "artifacts yet (copy the data in the job's code, or run it on the local pool)"
        )
    copies = [_prepared(db, row) for row in rows]
    waiting = [f"{r.name}:{r.version}" for r, c in zip(rows, copies, strict=True) if c is None]
    if waiting:
        raise TemporaryBackendError(f"preparing inputs: copying {', '.join(waiting)}")
    return tuple((item.path, str(copy)) for item, copy in zip(inputs, copies, strict=True))


_PREPARING: weakref.WeakKeyDictionary[Database, dict[str, asyncio.Task[Path]]] = (
    weakref.WeakKeyDictionary()
)


def _prepared(db: Database, row: Artifact) -> Path | None:
    """The version's verified copy in this node's cache when it is whole; else None, and
    its copy is being made by a task of its own (one per version, however many jobs wait
    for it), so a large copy never holds up the reconciler's pass: the job's launch is
    retried on a later pass and starts only once the copy is whole and verified. A copy
    that failed raises PermanentBackendError (once: a later launch tries again)."""
    target = store_for(db).cache_dir / row.digest
    if target.is_dir():
        with contextlib.suppress(OSError):  # its last use, for the cache's LRU eviction
            os.utime(target)
        return target
    tasks = _PREPARING.setdefault(db, {})
    task = tasks.get(row.digest)
    if task is None:
        tasks[row.digest] = asyncio.get_running_loop().create_task(
            materialise(db, row), name=f"prepare-{row.digest[:12]}"
        )
        return None
    if not task.done():
        return None
    del tasks[row.digest]
    error = task.exception()
    if error is None:
        return task.result()
    raise PermanentBackendError(f"cannot prepare the job's inputs: {error}") from error


async def keep_job_outputs(db: Database, executor: Executor, job: Job) -> ArtifactView | None:
    """When a job succeeds: its output folder (KAON_OUTPUT_DIR), if it holds files, as the
    next version of the artifact of kind output named after the job. Once per job: a
    repeat after a crash finds the version made before."""
    local = executor.get(LOCAL_POOL) if isinstance(executor, Pools) else executor
    if not isinstance(local, LocalExecutor):
        return None
    folder = local.output_dir(job.id)
    if not await asyncio.to_thread(_has_files, folder):
        return None
    async with db.session() as s:
        kept = await s.scalar(
            select(Artifact).where(
                Artifact.workspace_id == job.workspace_id, Artifact.source_job_id == job.id
            )
        )
        if kept is not None:
            return view_of(kept, await _workspace_name(s, job.workspace_id))
    return await store_folder(
        db,
        job.workspace_id,
        job.name or job.id,
        folder,
        kind=ArtifactKind.OUTPUT.value,
        created_by=f"job:{job.id}",
        source_job_id=job.id,
    )


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
