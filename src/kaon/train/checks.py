"""Checks that run before the first step, so a bad run fails in seconds, not hours.

Each raises `TrainConfigError` with a message that names the problem. The model check is
a dry forward pass on one real batch, in eval mode and without gradients, that compares
the output with the target the way the chosen loss will; the random generators are put
back afterwards, so checking does not change the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sized
from typing import Any

import torch

from kaon.train.config import LossFn, TrainConfig, TrainConfigError
from kaon.train.data import first_batch
from kaon.train.runtime import Runtime

__all__ = ["check_datasets", "check_model", "split_batch"]

_HINT = {
    "bce": "the model should end in a sigmoid with one output per target value",
    "bce_logits": "the model should return one raw score per target value",
    "mse": "the model should return one value per target value",
}


def check_datasets(config: TrainConfig, train: Any, val: Any | None, runtime: Runtime) -> None:
    _check_sized(train, "train_data")
    per_rank = math.ceil(len(train) / runtime.world_size)
    if config.batch_size > per_rank:
        where = f" ({per_rank} per process)" if runtime.distributed else ""
        raise TrainConfigError(
            f"batch_size {config.batch_size} is larger than the training set: "
            f"{len(train)} samples{where}; lower batch_size or add data"
        )
    if val is not None:
        _check_sized(val, "val_data")
    needs_val = config.early_stopping_patience is not None
    if needs_val and val is None:
        raise TrainConfigError("early stopping watches a validation metric: give val_data")


def _check_sized(dataset: Any, name: str) -> None:
    if not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__"):
        raise TrainConfigError(
            f"{name} must be a map-style dataset (with __len__ and __getitem__), "
            f"got {type(dataset).__name__}; resuming mid-epoch needs to index it"
        )
    if len(dataset) == 0:
        raise TrainConfigError(f"{name} is empty (0 samples)")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is an (inputs, targets) pair of tensors."""
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        raise TrainConfigError(
            "each sample must be an (input, target) pair, e.g. from TensorDataset(x, y); "
            f"a batch came out as {type(batch).__name__}"
        )
    inputs, targets = batch
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TrainConfigError("inputs and targets must be tensors")
    return inputs, targets


def check_model(
    model: torch.nn.Module,
    dataset: Any,
    config: TrainConfig,
    loss_fn: LossFn,
    device: torch.device,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dry forward on one batch; returns (inputs, outputs) for the model card."""
    inputs, targets = split_batch(first_batch(dataset, config.batch_size, collate_fn))
    inputs, targets = inputs.to(device), targets.to(device)
    outputs = _dry_forward(model, inputs)
    if isinstance(config.loss, str):
        _check_output(config.loss, outputs, targets)
    try:
        loss = loss_fn(outputs.float(), targets)
    except (RuntimeError, ValueError, IndexError) as e:
        raise TrainConfigError(f"the loss failed on one batch of train_data: {e}") from e
    if loss.dim() != 0:
        raise TrainConfigError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
    return inputs, outputs


def _dry_forward(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            outputs = model(inputs)
    except Exception as e:
        raise TrainConfigError(
            f"the model failed on one batch of train_data (inputs of shape "
            f"{tuple(inputs.shape)}): {type(e).__name__}: {e}"
        ) from e
    finally:
        model.train(was_training)
    if not isinstance(outputs, torch.Tensor):
        raise TrainConfigError(f"the model must return a tensor, got {type(outputs).__name__}")
    return outputs


def _check_output(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    got, want = tuple(outputs.shape), tuple(targets.shape)
    if loss == "cross_entropy":
        _check_classes(outputs, targets)
        return
    if got != want:
        raise TrainConfigError(
            f"the model returned shape {got} but the targets have shape {want}; "
            f"loss {loss!r} needs them equal ({_HINT[loss]})"
        )
    if loss == "bce" and (outputs.min() < 0 or outputs.max() > 1):
        raise TrainConfigError(
            "loss 'bce' takes probabilities in [0, 1] but the model returned values "
            "outside it; end the model in a sigmoid, or use loss 'bce_logits'"
        )


def _check_classes(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    got, want = tuple(outputs.shape), tuple(targets.shape)
    if targets.is_floating_point():
        if got != want:
            raise TrainConfigError(
                f"the model returned shape {got} but the class-probability targets have "
                f"shape {want}; loss 'cross_entropy' needs them equal"
            )
        return
    if got[:-1] != want:
        raise TrainConfigError(
            f"the model returned shape {got} but the targets have shape {want}; loss "
            f"'cross_entropy' wants outputs of shape targets + (classes,), classes last"
        )
    classes = got[-1]
    valid = targets[targets != -100]  # cross-entropy's ignore_index
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= classes):
        raise TrainConfigError(
            f"a target class is outside [0, {classes}) for a model with {classes} outputs"
        )
