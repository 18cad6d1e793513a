"""Checkpoints that are either complete or absent, and a way back to the latest good one.

A checkpoint is a folder, ``step-000000050/``, with four files:

- ``model.pt``: the model's ``state_dict()`` (what a predictor needs),
- ``train_state.pt``: optimizer, RNG states of every rank, data position, counters,
- ``model_card.json``: how to rebuild the model (factory, input shape, loss),
- ``manifest.json``: format version, step, and each file's size and SHA-256, written last.

It is written under a temporary name (``.tmp-step-...``), every file fsync'ed, then
renamed into place in one atomic step, and the parent folder fsync'ed. A process killed
at any moment leaves either the old set of checkpoints or the new one, plus maybe a
temporary folder that the next run deletes. On the way back, a checkpoint whose manifest
is missing or whose files do not match it (truncated by a copy, flipped bits on disk) is
skipped with a `CheckpointWarning`, never loaded, and the next older one is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from kaon.train.config import TrainConfig

__all__ = [
    "CheckpointWarning",
    "checkpoint_root",
    "clean_temporary",
    "latest_valid",
    "list_checkpoints",
    "load_checkpoint",
    "read_model_card",
    "root_setting",
    "save_checkpoint",
]

FORMAT = 1
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
CARD_FILE = "model_card.json"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SCRATCH_PREFIXES = (".tmp-", ".old-")


class CheckpointWarning(UserWarning):
    """A checkpoint on disk was skipped because it is incomplete or corrupt."""


def checkpoint_root(config: TrainConfig) -> Path:
    """``$KAON_CHECKPOINT_DIR`` (a Kaon job's folder that survives restarts) wins."""
    from_env = os.environ.get("KAON_CHECKPOINT_DIR")
    if from_env:
        return Path(from_env)
    if config.checkpoint_dir:
        return Path(config.checkpoint_dir)
    return Path(config.output_dir) / "checkpoints"


def root_setting(config: TrainConfig) -> str:
    """The setting that chose `checkpoint_root`, for messages that say what to change."""
    if os.environ.get("KAON_CHECKPOINT_DIR"):
        return "$KAON_CHECKPOINT_DIR"
    return "checkpoint_dir" if config.checkpoint_dir else "output_dir"


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, Any],
    train_state: dict[str, Any],
    card: dict[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint for `step` atomically, then keep only the last `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    scratch = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    files = {
        MODEL_FILE: _write(scratch / MODEL_FILE, lambda f: torch.save(model_state, f)),
        STATE_FILE: _write(scratch / STATE_FILE, lambda f: torch.save(train_state, f)),
        CARD_FILE: _write(scratch / CARD_FILE, lambda f: f.write(_json(card))),
    }
    manifest = {"format": FORMAT, "step": step, "time": time.time(), "files": files}
    _write(scratch / MANIFEST_FILE, lambda f: f.write(_json(manifest)))
    _fsync_dir(scratch)
    _commit(scratch, final)
    _prune(root, step, keep)
    return final


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


class _HashingWriter:
    """A write-only file that hashes what passes through it, so the checksum costs no
    second read of a checkpoint that may be many gigabytes."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


def _write(path: Path, fill: Callable[[Any], object]) -> dict[str, Any]:
    with open(path, "wb") as file:
        writer = _HashingWriter(file)
        fill(writer)
        file.flush()
        os.fsync(file.fileno())
    return {"bytes": writer.size, "sha256": writer.digest.hexdigest()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(scratch: Path, final: Path) -> None:
    """Rename into place. A checkpoint for the same step (saved again after a resume) is
    moved aside first, because a folder cannot be renamed over a non-empty one."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        final.rename(old)
    scratch.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, step: int, keep: int) -> None:
    """Keep the newest `keep` checkpoints. Ones past `step` belong to a run this one has
    replaced (it resumed from an older checkpoint, or started fresh), so they go too."""
    ours = [path for path in list_checkpoints(root) if _step_of(path) <= step]
    stale = [path for path in list_checkpoints(root) if _step_of(path) > step]
    for path in stale + ours[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first (not checked; see `latest_valid`)."""
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if _STEP_DIR.match(path.name) and path.is_dir()]
    return sorted(found, key=_step_of)


def clean_temporary(root: Path) -> None:
    """Delete what a killed writer left behind. Only one process writes checkpoints."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_SCRATCH_PREFIXES):
                shutil.rmtree(path, ignore_errors=True)


def problem_with(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, or None when it can."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return "no manifest.json (written last, so the checkpoint is incomplete)"
    except (OSError, ValueError) as e:
        return f"unreadable manifest.json ({e})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT}"
    for name in (MODEL_FILE, STATE_FILE, CARD_FILE):
        expected = manifest.get("files", {}).get(name)
        reason = _file_problem(path / name, expected)
        if reason:
            return f"{name}: {reason}"
    return None


def _file_problem(path: Path, expected: Any) -> str | None:
    if not isinstance(expected, dict):
        return "not listed in the manifest"
    try:
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{size} bytes, the manifest says {expected.get('bytes')}"
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        return f"unreadable ({e})"
    if digest.hexdigest() != expected.get("sha256"):
        return "contents do not match the manifest's SHA-256 (corrupt)"
    return None


def latest_valid(root: Path) -> Path | None:
    """The newest checkpoint that passes `problem_with`; warns about each one skipped."""
    for path in reversed(list_checkpoints(root)):
        reason = problem_with(path)
        if reason is None:
            return path
        warnings.warn(
            f"skipping checkpoint {path.name}: {reason}", CheckpointWarning, stacklevel=2
        )
    return None


def load_checkpoint(
    path: Path, device: torch.device | str = "cpu", *, with_train_state: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(model state_dict, train state or None). Loads plain tensors and containers only
    (``weights_only=True``), so a tampered checkpoint cannot run code. The train state
    stays on the CPU: RNG states must, and the optimizer moves its own state over."""
    model_state = torch.load(path / MODEL_FILE, map_location=device, weights_only=True)
    if not with_train_state:
        return model_state, None
    train_state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return model_state, train_state


def read_model_card(path: Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((path / CARD_FILE).read_text())
    return card
