"""A job's files for nodes that share no disk with the control plane: its code snapshot,
and its checkpoint folder, which a node mirrors here (`kaon.executors.node_sync`).

Who may ask is decided by the job's own tokens, never by an API token:

- **Code** needs the token of the job's current attempt, the check `jobs.add_metrics`
  makes: a node fetches code only to start that attempt.
- **Checkpoints** take the token of any attempt of the job. A worker's last checkpoint,
  written as it is preempted, is pushed after its attempt may already have ended (its
  token hash cleared, a new attempt scheduled), and that checkpoint is the one the next
  attempt needs. The tokens are derived from the control plane's key, so checking
  ``job_token(key, job_id, a)`` for each attempt needs no table; a token of another job
  matches none of them.

The checkpoint folder is ``settings.checkpoints_dir / job_id``, the folder the local
executor gives its workers, so ``kaon deploy create --from-job`` finds a job's
checkpoints whichever executor trained it. Names are checked by the rule the nodes use
(`node_sync.path_problem`); no symlink under the folder is ever followed. An upload is
streamed to a temporary file beside its destination, hashed on the way, checked against
the ``X-Kaon-Sha256`` header, fsync'ed and renamed into place, so a reader (or a
deployment) sees the old file or the new one, never half of one. Hashing and disk writes
run in worker threads, a MiB at a time, so a 64 GiB upload never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import os
import re
import stat
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from kaon.core.errors import (
    AuthError,
    ConflictError,
    InvalidSpecError,
    NotFoundError,
    PayloadTooLargeError,
)
from kaon.core.tokens import hash_token
from kaon.executors.node_sync import PART_PREFIX, SHA256_HEADER, path_problem, resolve_under
from kaon.server.db.models import Job
from kaon.server.db.session import Database
from kaon.server.security.tokens import job_token
from kaon.server.services.pool import stored_spec
from kaon.server.services.snapshots import snapshot_path

CHUNK = 1 << 20
NAME_MAX = 255  # bytes in one file name (Linux, macOS): longer fails in the file system
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CheckpointFile:
    """One file of a job's checkpoint folder, as a node compares it with its own copy."""

    path: str  # relative, POSIX
    size: int
    sha256: str


@dataclass(frozen=True)
class Download:
    """A file opened for reading, streamed in chunks. The size is that of the open file,
    so a file replaced meanwhile (by rename) is still sent whole, as it was."""

    size: int
    chunks: AsyncIterator[bytes]
    sha256: str | None = None


# -- who may ask ------------------------------------------------------------------------------


async def _job_of_current_attempt(session: AsyncSession, job_id: str, bearer: str | None) -> Job:
    job = await session.get(Job, job_id)
    if (
        job is None
        or bearer is None
        or job.job_token_hash is None
        or not hmac.compare_digest(job.job_token_hash, hash_token(bearer))
    ):
        raise AuthError("invalid job token")
    return job


async def _job_of_any_attempt(
    session: AsyncSession, key: bytes, job_id: str, bearer: str | None
) -> Job:
    job = await session.get(Job, job_id)
    if job is None or bearer is None or not _is_token_of(key, job, bearer):
        raise AuthError("invalid job token")
    return job


def _is_token_of(key: bytes, job: Job, bearer: str) -> bool:
    """Whether `bearer` is the token of one of the job's attempts, newest first."""
    given = bearer.encode()
    return any(
        hmac.compare_digest(job_token(key, job.id, attempt).encode(), given)
        for attempt in range(job.attempt, 0, -1)
    )


async def _checkpoint_root(
    db: Database, key: bytes, job_id: str, bearer: str | None, checkpoints_dir: Path
) -> Path:
    """The job's checkpoint folder, once the token is one of its attempts'. The session
    ends here, so a long transfer holds no database connection."""
    async with db.session() as s:
        job = await _job_of_any_attempt(s, key, job_id, bearer)
    return checkpoints_dir / job.id


def _checked_path(path: str) -> str:
    problem = path_problem(path)
    if problem is None and any(len(part.encode()) > NAME_MAX for part in path.split("/")):
        problem = f"has a part longer than {NAME_MAX} bytes, more than a file name can hold"
    if problem:
        raise InvalidSpecError(f"checkpoint path {path[:100]!r} {problem}", field="path")
    return path


# -- code -------------------------------------------------------------------------------------


async def code(db: Database, job_id: str, bearer: str | None, blobs_dir: Path) -> Download:
    """The job's code snapshot (a tar.gz), for the node that starts its current attempt."""
    async with db.session() as s:
        job = await _job_of_current_attempt(s, job_id, bearer)
    sha = stored_spec(job).snapshot
    if sha is None:
        raise NotFoundError(f"job {job_id} has no code snapshot")
    found = await asyncio.to_thread(_open_file, snapshot_path(blobs_dir, sha))
    if found is None:
        raise NotFoundError(f"snapshot {sha[:12]} of job {job_id} is not in the blob store")
    return Download(os.fstat(found.fileno()).st_size, _chunks(found), sha256=sha)


# -- checkpoints ------------------------------------------------------------------------------


async def list_checkpoints(
    db: Database, key: bytes, job_id: str, bearer: str | None, checkpoints_dir: Path
) -> list[CheckpointFile]:
    """Every file of the job's checkpoint folder, sorted by path."""
    root = await _checkpoint_root(db, key, job_id, bearer, checkpoints_dir)
    return await asyncio.to_thread(_listing, root)


async def read_checkpoint(
    db: Database, key: bytes, job_id: str, bearer: str | None, checkpoints_dir: Path, path: str
) -> Download:
    root = await _checkpoint_root(db, key, job_id, bearer, checkpoints_dir)
    found = await asyncio.to_thread(_open_under, root, _checked_path(path))
    if found is None:
        raise NotFoundError(f"job {job_id} has no checkpoint file {path!r}")
    return Download(os.fstat(found.fileno()).st_size, _chunks(found))


async def write_checkpoint(
    db: Database,
    key: bytes,
    job_id: str,
    bearer: str | None,
    checkpoints_dir: Path,
    path: str,
    sha256: str | None,
    length: int | None,
    chunks: AsyncIterator[bytes],
    limit: int,
) -> CheckpointFile:
    """Store one file, replacing any old one at once and only when the body is whole and
    its SHA-256 is `sha256`. 413 as soon as the body (or its Content-Length) is over
    `limit`; 422 naming ``X-Kaon-Sha256`` on a mismatch, with nothing replaced."""
    root = await _checkpoint_root(db, key, job_id, bearer, checkpoints_dir)
    rel = _checked_path(path)
    if sha256 is None or not _SHA256.fullmatch(sha256.lower()):
        raise InvalidSpecError(
            f"send the body's SHA-256 (64 hex digits) in {SHA256_HEADER}", field=SHA256_HEADER
        )
    if length is not None and length > limit:
        raise _too_large(limit)
    target, sink = await asyncio.to_thread(_open_sink, root, rel)
    size = await _receive(chunks, sink, target, rel, sha256.lower(), limit)
    return CheckpointFile(rel, size, sha256.lower())


async def delete_checkpoint(
    db: Database, key: bytes, job_id: str, bearer: str | None, checkpoints_dir: Path, path: str
) -> None:
    """Delete one file, and the folders it leaves empty. Deleting what is not there is
    fine: a node retries a delete whose answer it did not get."""
    root = await _checkpoint_root(db, key, job_id, bearer, checkpoints_dir)
    await asyncio.to_thread(_remove, root, _checked_path(path))


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"checkpoint file over the upload limit of {limit} bytes; "
        "raise KAON_CHECKPOINT_UPLOAD_LIMIT on the control plane"
    )


# -- the file system (in worker threads) --------------------------------------------------------


def _open_file(path: Path) -> io.FileIO | None:
    """`path` opened for reading when it is a regular file (not through a symlink at the
    last part), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # missing, or a symlink (ELOOP)
        return None
    f = os.fdopen(fd, "rb", buffering=0)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        return None
    return f


def _open_under(root: Path, path: str) -> io.FileIO | None:
    try:
        return _open_file(resolve_under(root, path))
    except (FileNotFoundError, NotADirectoryError):
        return None


async def _chunks(f: io.FileIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


def _listing(root: Path) -> list[CheckpointFile]:
    """os.walk does not enter symlinked folders; symlinked files are left out too."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(root).as_posix()
            if name.startswith(PART_PREFIX) or path_problem(rel):
                continue  # uploads on their way in, and names no node could ask for
            hashed = _hash_of(full)
            if hashed is not None:
                found.append(CheckpointFile(rel, *hashed))
    return sorted(found, key=lambda f: f.path)


def _hash_of(path: str) -> tuple[int, str] | None:
    """(size, sha256) of a regular file, or None when it is gone or not one."""
    f = _open_file(Path(path))
    if f is None:
        return None
    with f:
        st = os.fstat(f.fileno())
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        sha = _hashes.get(identity)
        if sha is None:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
            _hashes.put(identity, sha)
        return st.st_size, sha


class _HashCache:
    """SHA-256s of files by (device, inode, size, mtime), which any write changes (an
    upload renames a new inode into place). Every node listing the folder before each
    attempt would otherwise hash gigabytes of unchanged checkpoints again."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._items: dict[tuple[int, int, int, int], str] = {}

    def get(self, identity: tuple[int, int, int, int]) -> str | None:
        with self._lock:
            return self._items.get(identity)

    def put(self, identity: tuple[int, int, int, int], sha256: str) -> None:
        with self._lock:
            if len(self._items) >= self._limit:
                del self._items[next(iter(self._items))]  # the oldest
            self._items[identity] = sha256


_hashes = _HashCache()


def _open_sink(root: Path, path: str, tries: int = 3) -> tuple[Path, _Sink]:
    """Make the folders on the way to `path` (none of them a symlink) and a temporary
    file beside it. A delete of the folder's last file may remove the folder meanwhile:
    then the folders are made again."""
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        try:
            target = resolve_under(root, path, create=True)
        except NotADirectoryError as e:
            raise ConflictError(f"cannot write {path!r}: {e}") from e
        if os.path.isdir(target) and not os.path.islink(target):
            raise ConflictError(f"cannot write {path!r}: it is a folder")
        try:
            return target, _Sink(target.parent)
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


class _Sink:
    """The temporary file an upload goes to, hashed as it is written."""

    def __init__(self, folder: Path) -> None:
        fd, self.name = tempfile.mkstemp(prefix=PART_PREFIX, dir=folder)
        self.file = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.file.write(data)

    def finish(self, data: bytes) -> None:
        self.write(data)
        self.file.flush()
        os.fchmod(self.file.fileno(), 0o600)  # the home is private (mkstemp makes 0600 too)
        os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name)


async def _receive(
    chunks: AsyncIterator[bytes], sink: _Sink, target: Path, path: str, sha256: str, limit: int
) -> int:
    """Stream the body into `sink`, then rename it over `target` when whole and matching
    `sha256`. Returns its size."""
    try:
        size, pending = 0, bytearray()
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            pending += chunk
            if len(pending) >= CHUNK:
                data, pending = bytes(pending), bytearray()
                await asyncio.to_thread(sink.write, data)
        await asyncio.to_thread(sink.finish, bytes(pending))
        got = sink.digest.hexdigest()
        if got != sha256:
            raise InvalidSpecError(
                f"the body of {path!r} has SHA-256 {got}, not {sha256}: nothing was replaced",
                field=SHA256_HEADER,
            )
        await asyncio.to_thread(_commit, sink.name, target, got)
        return size
    finally:
        await asyncio.to_thread(sink.discard)


def _commit(tmp: str, target: Path, sha256: str) -> None:
    st = os.stat(tmp)
    try:
        os.replace(tmp, target)  # over a symlink, replaces the link itself
    except IsADirectoryError as e:  # a folder was made there meanwhile
        raise ConflictError(f"cannot write {target.name!r}: it is a folder") from e
    # A rename keeps the inode and mtime: the next listing need not hash the file again.
    _hashes.put((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), sha256)


def _remove(root: Path, path: str) -> None:
    try:
        target = resolve_under(root, path)
        os.unlink(target)  # a symlink itself, never what it points at
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing of the job's there: already deleted
    except IsADirectoryError as e:
        raise ConflictError(f"cannot delete {path!r}: it is a folder") from e
    folder = target.parent
    while folder != root:  # folders the file leaves empty (kaon.train prunes whole steps)
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent
