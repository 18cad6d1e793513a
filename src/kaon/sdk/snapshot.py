"""Pack a working directory into a reproducible tar.gz, so the same folder always has the
same SHA-256 and is uploaded once."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

DEFAULT_IGNORE = (
    ".git",
    ".hg",
    "__pycache__",
    "*.pyc",
    ".venv",
    "venv",
    "node_modules",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".ipynb_checkpoints",
)


class SnapshotTooLarge(ValueError):
    pass


def _patterns(root: Path) -> list[str]:
    patterns = list(DEFAULT_IGNORE)
    ignore = root / ".kaonignore"
    if ignore.exists():
        for line in ignore.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.rstrip("/"))
    return patterns


def _ignored(rel: str, name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)


def pack(root: Path, limit: int = 100 * 2**20) -> tuple[bytes, str]:
    """(tar.gz bytes, sha256). Files are sorted and owners, times and modes normalised."""
    root = root.resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    patterns = _patterns(root)
    buffer = io.BytesIO()
    total = 0
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not _ignored(os.path.normpath(os.path.join(rel_dir, d)), d, patterns)
            )
            for name in sorted(filenames):
                rel = os.path.normpath(os.path.join(rel_dir, name))
                path = Path(dirpath) / name
                if _ignored(rel, name, patterns) or path.is_symlink() or not path.is_file():
                    continue
                total += path.stat().st_size
                if total > limit:
                    raise SnapshotTooLarge(
                        f"{root} holds over {limit // 2**20} MiB; list large files in .kaonignore"
                    )
                info = tarfile.TarInfo(rel)
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()
