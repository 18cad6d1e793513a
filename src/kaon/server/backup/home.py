"""The files of ``KAON_HOME`` a backup holds, and the artifact store it copies.

Held: the run folders (``runs/``: each job's logs, run records and outputs), the
checkpoints (``checkpoints/``), the code snapshots (``blobs/``) and the key that derives
job and replica tokens (``server.key``: without it every running job's token would stop
working). Not held: the master key (kept apart, on purpose), the database files (their
rows travel as rows), the saved admin token and client config (a token's hash is in the
database; its secret was shown once), and what each start makes again (the instance id,
pid and log files, the pools' state folders).
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kaon.server.backup.format import SEGMENT, safe_path
from kaon.server.config import Settings
from kaon.server.security.tokens import KEY_FILE
from kaon.server.storage.blobstore import BlobStore, LocalBlobStore

STATE_DIRS = ("runs", "checkpoints", "blobs")
STATE_FILES = (KEY_FILE,)
ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class HomeFile:
    relative: str  # with "/" between parts, under the home
    path: Path
    mode: int
    size: int


def state_files(home: Path) -> Iterator[HomeFile]:
    """Every regular file that holds state, in a stable order. Links are not followed
    (an operator's link to another disk is theirs to back up)."""
    for name in STATE_FILES:
        found = _regular(home, home / name)
        if found is not None:
            yield found
    for top in STATE_DIRS:
        root = home / top
        if not root.is_dir() or root.is_symlink():
            continue
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                found = _regular(home, Path(folder) / name)
                if found is not None:
                    yield found


def _regular(home: Path, path: Path) -> HomeFile | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None  # gone since it was listed: a temporary file
    if not stat.S_ISREG(st.st_mode):
        return None
    return HomeFile(path.relative_to(home).as_posix(), path, stat.S_IMODE(st.st_mode), st.st_size)


def open_segments(path: Path) -> Iterator[bytes] | None:
    """A file's bytes as they are now (a log that grows is read to its current end), or
    None if it is gone: it is opened at once, so a file that vanishes is skipped whole."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    return _segments(handle)


def _segments(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while block := handle.read(SEGMENT):
            yield block


def artifact_store(settings: Settings) -> BlobStore:
    """The artifact store the control plane is configured with (``KAON_ARTIFACT_STORE``:
    a folder or a bucket), opened as the server opens it; by default the folder
    ``artifacts/`` of the home."""
    location = getattr(settings, "artifact_store", None)
    local_root = getattr(settings, "artifacts_dir", settings.home / ARTIFACTS_DIR)
    try:
        storage = importlib.import_module("kaon.server.storage")
    except ImportError:
        storage = None
    opener = getattr(storage, "open_blob_store", None)
    if callable(opener):
        store: BlobStore = opener(location, local_root, getattr(settings, "s3_endpoint_url", None))
        return store
    return LocalBlobStore(Path(location).expanduser() if location else local_root)


class Staging:
    """Files restored into a folder of the home first, and moved into place together
    once every one of them is whole."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.root = home / name

    def write(self, relative: str, mode: int, segments: Iterator[bytes]) -> int:
        target = self.root / safe_path(relative)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        with os.fdopen(fd, "wb") as out:
            for segment in segments:
                out.write(segment)
                size += len(segment)
        os.chmod(target, mode & 0o777)
        return size

    def commit(self) -> None:
        if not self.root.exists():
            return
        for entry in sorted(self.root.iterdir()):
            os.replace(entry, self.home / entry.name)
        self.root.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
