"""``client.artifacts``: versioned folders of a workspace (datasets, models, job outputs),
stored encrypted and once per content.

    >>> client.artifacts.push("digits", "data/digits", kind="dataset").ref
    'digits:1'
    >>> [a.ref for a in client.artifacts.list()]
    ['digits:1']
    >>> client.artifacts.download("digits", "/tmp/digits")   # the latest; sha256 checked
    >>> client.artifacts.delete("digits:1")

A push hashes each file, asks the control plane which blobs it already has (a HEAD per
blob), uploads only the others, then creates the version from the manifest. A download
writes each file beside its destination, checks its sha256, and only then renames it in.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaon.core.artifacts import ArtifactView, BlobView, CreateArtifact, ManifestEntry
from kaon.core.errors import KaonError, NotFoundError

if TYPE_CHECKING:
    from kaon.sdk.client import Client

CHUNK = 1 << 20
HASH_CHUNK = 8 << 20
SEND_CHUNK = 4 << 20  # fewer, larger writes to the socket
Progress = Callable[[int], None]
"""Called with each count of bytes sent or received."""


class IntegrityError(KaonError):
    """A downloaded file does not hash to its manifest's sha256; nothing was kept."""


@dataclass(frozen=True)
class LocalFile:
    path: Path
    entry: ManifestEntry


def scan(source: Path) -> list[LocalFile]:
    """Every regular file under `source` (or `source` itself, named by its file name)
    with its sha256; symlinks are skipped, not followed."""
    if source.is_file():
        return [LocalFile(source, _entry(source, source.name))]
    if not source.is_dir():
        raise NotFoundError(f"{source}: no such file or folder")
    out: list[LocalFile] = []
    for root, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if stat.S_ISREG(path.lstat().st_mode):
                out.append(LocalFile(path, _entry(path, path.relative_to(source).as_posix())))
    return out


def _entry(path: Path, rel: str) -> ManifestEntry:
    digest = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)  # one buffer, read into: no new bytes per read
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])  # large buffers: hashed without the GIL
    st = path.stat()
    return ManifestEntry(
        path=rel, sha256=digest.hexdigest(), size=st.st_size, mode=st.st_mode & 0o777
    )


def _read(path: Path, progress: Progress | None) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(SEND_CHUNK):
            if progress:
                progress(len(chunk))
            yield chunk


class Artifacts:
    def __init__(self, client: Client) -> None:
        self._c = client

    def _blob(self, sha256: str, workspace: str | None) -> str:
        return self._c.ws_path(f"/blobs/{sha256}", workspace)

    def has_blob(self, sha256: str, workspace: str | None = None) -> bool:
        try:
            self._c.request("HEAD", self._blob(sha256, workspace))
        except NotFoundError:
            return False
        return True

    def upload_blob(
        self,
        path: Path,
        sha256: str,
        workspace: str | None = None,
        progress: Progress | None = None,
    ) -> BlobView:
        """Stream one file as a blob (the server checks the sha256)."""
        headers = {"Content-Length": str(path.stat().st_size)}
        answer = self._c.request(
            "PUT",
            self._blob(sha256, workspace),
            content=_read(path, progress),
            headers=headers,
            timeout=None,
        )
        return BlobView.model_validate(answer.json())

    def push(
        self,
        name: str,
        source: str | Path,
        kind: str = "other",
        metadata: dict[str, Any] | None = None,
        workspace: str | None = None,
        progress: Progress | None = None,
        files: list[LocalFile] | None = None,
    ) -> ArtifactView:
        """Keep a folder (or one file) as the next version of `name`. Blobs the workspace
        has already are not sent again (`progress` is told of their bytes all the same)."""
        files = scan(Path(source)) if files is None else files
        sent: set[str] = set()
        for f in files:
            sha = f.entry.sha256
            if sha in sent or self.has_blob(sha, workspace):
                if progress:
                    progress(f.entry.size)
            else:
                self.upload_blob(f.path, sha, workspace, progress)
            sent.add(sha)
        body = CreateArtifact.model_validate(
            {"kind": kind, "files": [f.entry for f in files], "metadata": metadata or {}}
        )
        path = self._c.ws_path(f"/artifacts/{name}", workspace)
        answer = self._c.request("POST", path, json=body.model_dump(mode="json"))
        return ArtifactView.model_validate(answer.json())

    def list(self, name: str | None = None, workspace: str | None = None) -> list[ArtifactView]:
        params = {"name": name} if name else {}
        rows = self._c.request("GET", self._c.ws_path("/artifacts", workspace), params=params)
        return [ArtifactView.model_validate(r) for r in rows.json()]

    def get(self, ref: str, workspace: str | None = None) -> ArtifactView:
        """One version (``name`` for the latest, ``name:3``) with its manifest."""
        answer = self._c.request("GET", self._c.ws_path(f"/artifacts/{ref}", workspace))
        return ArtifactView.model_validate(answer.json())

    def delete(self, ref: str, workspace: str | None = None) -> ArtifactView:
        """Delete one version (``name:3``); blobs no other version uses go with it."""
        answer = self._c.request("DELETE", self._c.ws_path(f"/artifacts/{ref}", workspace))
        return ArtifactView.model_validate(answer.json())

    def download(
        self,
        ref: str,
        dest: str | Path,
        workspace: str | None = None,
        progress: Progress | None = None,
    ) -> ArtifactView:
        """Write the version's files under `dest`, each checked against its sha256."""
        view = self.get(ref, workspace)
        root = Path(dest)
        for entry in view.files or []:
            self.download_blob(entry, root / entry.path, workspace, progress)
        return view

    def download_blob(
        self,
        entry: ManifestEntry,
        target: Path,
        workspace: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        try:
            with part.open("wb") as out:
                for chunk in self._c.stream_bytes(self._blob(entry.sha256, workspace)):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            if digest.hexdigest() != entry.sha256:
                raise IntegrityError(
                    f"{entry.path}: downloaded bytes hash to {digest.hexdigest()}, "
                    f"not {entry.sha256}"
                )
            os.chmod(part, entry.mode)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
