"""From a checkpoint folder back to a model that answers: for scripts and for serving.

>>> model = load_model("out/checkpoints")        # rebuilt from the model card's factory
>>> predict(model, torch.tensor([[0.1, -0.3]]))

`load_model` takes either one checkpoint (``step-000000050/``) or the folder that holds
them, in which case the newest valid one is used, with the same checks as a resume:
incomplete or corrupt checkpoints are skipped with a warning. Only the weights file is
read; the optimizer state, often twice the size, stays on disk.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kaon.train import checkpoint as ckpt

__all__ = ["latest_checkpoint", "load_model", "predict", "read_model_card"]


def latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint at `path`, or the newest valid one inside it."""
    path = Path(path)
    if (path / ckpt.MANIFEST_FILE).exists() or ckpt._STEP_DIR.match(path.name):
        reason = ckpt.problem_with(path)
        if reason:
            raise FileNotFoundError(f"checkpoint {path} is not usable: {reason}")
        return path
    found = ckpt.latest_valid(path)
    if found is None:
        raise FileNotFoundError(f"no valid checkpoint in {path}")
    return found


def read_model_card(path: str | Path) -> dict[str, Any]:
    """The model card (factory, input shape, loss, step, metrics) of the checkpoint."""
    return ckpt.read_model_card(latest_checkpoint(path))


def load_model(
    path: str | Path, model: torch.nn.Module | None = None, *, device: str = "cpu"
) -> torch.nn.Module:
    """Load the checkpoint's weights into `model`, or into a model built from the card's
    factory; returns it in eval mode on `device`."""
    found = latest_checkpoint(path)
    if model is None:
        card = ckpt.read_model_card(found)
        if not card.get("factory"):
            raise ValueError(
                f"the model card in {found} names no factory; pass the model to load into, "
                "or give Trainer(model_factory='module:Class')"
            )
        model = _import(card["factory"])(**card.get("factory_kwargs", {}))
    weights, _ = ckpt.load_checkpoint(found, device, with_train_state=False)
    model.load_state_dict(weights)
    return model.to(device).eval()


def _import(factory: str) -> Callable[..., torch.nn.Module]:
    module_name, _, attr = factory.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{factory} is not callable")
    return target  # type: ignore[no-any-return]


def predict(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's outputs for a batch of `inputs`, in eval mode without autograd."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        out: torch.Tensor = model(inputs.to(device))
    return out
