"""The model card: what a predictor needs to rebuild and call the model, saved beside the
weights in every checkpoint (``model_card.json``), so a checkpoint can be served without
the script that trained it.

It is built once, from the dry forward pass the trainer runs before training, which is
why the input and output shapes and dtypes are known; the step and latest metrics are
added at each save.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from kaon.train import checkpoint as ckpt
from kaon.train.config import TrainConfig, loss_name

__all__ = ["importable_name", "model_card"]


def model_card(
    config: TrainConfig,
    model: torch.nn.Module,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    factory: str | None,
    kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Factory, shapes per sample (without the batch axis), loss and torch version."""
    return {
        "format": ckpt.FORMAT,
        "factory": factory or importable_name(model),
        "factory_kwargs": dict(kwargs or {}),
        "input_shape": list(inputs.shape[1:]),
        "input_dtype": str(inputs.dtype).removeprefix("torch."),
        "output_shape": list(outputs.shape[1:]),
        "loss": loss_name(config.loss),
        "torch_version": torch.__version__,
    }


def importable_name(model: torch.nn.Module) -> str | None:
    """The model's class as "module:Class" when it can be imported by name. Not for classes in
    `__main__` or a function, and not for torch's own (an empty Sequential is no use)."""
    cls = type(model)
    module, name = cls.__module__, cls.__qualname__
    if module == "__main__" or "<locals>" in name or module.split(".")[0] == "torch":
        return None
    return f"{module}:{name}"
