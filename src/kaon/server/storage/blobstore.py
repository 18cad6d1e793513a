"""The one seam to the bytes of artifacts: a flat key -> bytes store.

Keys are ``<workspace id>/<sha256 of the plaintext>``; values are what the artifact layer
hands over (already encrypted: a store never sees plaintext, so a bucket or a disk holds
nothing readable without the master key). A write is atomic: a reader sees the whole
value or no value, never half of one, so a crash mid-push leaves nothing to clean but a
temporary file. Two stores ship: `LocalBlobStore` (a folder under ``KAON_HOME``, the
default) and an S3-compatible bucket (`kaon.server.storage.s3`). Backup and restore copy
values through this interface, as stored, so they work the same for both.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


class BlobStore(Protocol):
    """A flat, atomic key -> bytes store. Implementations are synchronous (call them from a
    thread in async code) and safe to share between threads."""

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the concatenated chunks under key (replacing any value); bytes stored."""
        ...

    def get(self, key: str) -> Iterator[bytes]:
        """The value's bytes in chunks; `KeyError` if there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the value; no error if there is none."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with prefix, in no promised order."""
        ...

    def entries(self, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        """Every key that starts with prefix, with when its value was written (UTC)."""
        ...


_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def check_key(key: str) -> str:
    """Keys are two plain path segments (letters, digits, '-' and '_', as workspace ids and
    hex digests are): no way out of the store's folder or bucket."""
    parts = key.split("/")
    if len(parts) != 2 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ValueError(f"bad blob key {key!r}")
    return key


class LocalBlobStore:
    """Values as files under root (``<root>/<workspace>/<sha[:2]>/<sha>``), 0600 in 0700
    folders, written to a temporary file and renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        workspace, name = check_key(key).split("/")
        return self.root / workspace / name[:2] / name

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def get(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        return _read(handle)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for workspace in sorted(self.root.iterdir()):
            for path in sorted(workspace.glob("*/*")):
                key = f"{workspace.name}/{path.name}"
                if not path.name.startswith(".") and key.startswith(prefix):
                    yield key

    def entries(self, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        for key in self.keys(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                mtime = self._path(key).stat().st_mtime
                yield key, datetime.fromtimestamp(mtime, UTC)


def _read(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk
