"""From a `kaon.train` checkpoint to a model the engine can drive."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kaon.llm.models import CachedDecoder

__all__ = ["from_checkpoint"]


def from_checkpoint(
    path: str | Path, model: nn.Module | None = None, *, slots: int = 16, device: str = "cpu"
) -> CachedDecoder:
    """The newest valid checkpoint at `path` (a job's checkpoint folder, or one checkpoint)
    loaded into `model` (or into one built from the model card's factory), with a KV cache
    for `slots` sequences."""
    from kaon.train.predict import load_model

    return CachedDecoder(load_model(path, model, device=device), slots)
