"""Artifacts: the words the server, the SDK and the CLI share.

An artifact is a named, versioned folder (a dataset, a model, a job's outputs) kept as a
manifest of files, each file a content-addressed blob of its workspace::

    digits:3 -> [{path: "train.csv", sha256: "9f2c...", size: 1048576, mode: 0o644}, ...]

A blob is stored once per workspace however many versions name it (its key is the
sha256 of its plaintext), always encrypted (`kaon.server.storage.sealed`). A version's
``digest`` is the sha256 of its canonical manifest, so two versions with the same files
have the same digest, and a node's cache of a version is named by it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kaon.core.validation import is_sha256

_ARTIFACT_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")  # as job names
_VERSION = re.compile(r"[0-9]{1,12}")
MAX_MANIFEST_FILES = 100_000
MAX_PATH = 1024
MAX_VERSION = 2**31 - 1  # the version column is a 32-bit integer


class ArtifactKind(enum.StrEnum):
    DATASET = "dataset"
    MODEL = "model"
    OUTPUT = "output"  # a job's output folder, kept when the job succeeds
    OTHER = "other"


def check_artifact_name(value: str) -> str:
    """Artifact names follow job names (a job's outputs are kept under its name)."""
    if not _ARTIFACT_NAME.match(value):
        raise ValueError("artifact name must be 1-63 characters of a-z, 0-9, '.', '_' or '-'")
    return value


def check_relative_path(value: str, what: str = "path") -> str:
    """A plain relative POSIX path: no absolute path, no '..', no empty or '.' parts."""
    if not value or len(value) > MAX_PATH or "\x00" in value or "\\" in value:
        raise ValueError(f"{what} must be a relative path of 1-{MAX_PATH} characters")
    parts = value.rstrip("/").split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what} {value!r} must be relative, without '.', '..' or '//'")
    return value


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` (the latest version) or ``name:VERSION``; ValueError naming the ref."""
    name, sep, version = ref.partition(":")
    try:
        check_artifact_name(name)
        if sep and not _VERSION.fullmatch(version):
            raise ValueError(version)
        number = int(version) if sep else None
    except ValueError:
        raise ValueError(f"artifact reference {ref!r} must be NAME or NAME:VERSION") from None
    if number is not None and not 1 <= number <= MAX_VERSION:
        raise ValueError(f"artifact reference {ref!r}: versions are 1 to {MAX_VERSION}")
    return name, number


class ManifestEntry(BaseModel):
    """One file of an artifact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="relative POSIX path inside the artifact")
    sha256: str = Field(description="sha256 hex digest of the file's bytes")
    size: int = Field(ge=0, le=2**60)
    mode: int = Field(default=0o644, ge=0, le=0o777, description="permission bits")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_relative_path(value)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not is_sha256(value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value


def manifest_digest(files: list[ManifestEntry]) -> str:
    """The sha256 of the canonical manifest (sorted by path, compact JSON)."""
    rows = [e.model_dump() for e in sorted(files, key=lambda e: e.path)]
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_manifest(files: list[ManifestEntry]) -> list[ManifestEntry]:
    """Each path once, and no path both a file and a folder of another file."""
    paths = {e.path for e in files}
    if len(paths) != len(files):
        raise ValueError("manifest names a path twice")
    for path in paths:
        for parent in PurePosixPath(path).parents:
            if str(parent) in paths:
                raise ValueError(f"manifest path {str(parent)!r} is both a file and a folder")
    return files


class CreateArtifact(BaseModel):
    """A new version of an artifact, from blobs already uploaded."""

    model_config = ConfigDict(extra="forbid")

    kind: ArtifactKind = ArtifactKind.OTHER
    files: list[ManifestEntry] = Field(max_length=MAX_MANIFEST_FILES)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _files(cls, value: list[ManifestEntry]) -> list[ManifestEntry]:
        return check_manifest(value)


class ArtifactView(BaseModel):
    """One version of an artifact, as the API returns it (``files`` only when asked)."""

    name: str
    version: int
    workspace: str
    kind: ArtifactKind
    size: int
    file_count: int
    digest: str
    source_job_id: str | None = None
    created_by: str
    created_at: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    files: list[ManifestEntry] | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class BlobView(BaseModel):
    """A stored blob: its plaintext size and what it takes in the store."""

    sha256: str
    size: int
    stored_size: int


class JobInput(BaseModel):
    """``{artifact: "digits:3", path: "data/"}``: a version of an artifact the job's
    workers find, read-only, at `path` in their working folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact: str = Field(description="NAME (latest version at submit) or NAME:VERSION")
    path: str = Field(description="relative path in the worker's working folder")

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, value: str) -> str:
        parse_ref(value)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_relative_path(value, "input path")
