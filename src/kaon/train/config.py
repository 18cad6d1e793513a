"""What a training run is asked to do, checked before any work starts.

`TrainConfig` is a frozen dataclass: every field has a default that trains a small model
on a CPU, and `__post_init__` rejects values that would only fail later (a learning rate
of zero, an unknown loss name) with a `TrainConfigError` that names the problem and, for
names, lists the valid ones. Losses, optimizers and the learning-rate schedule are chosen
by name here so that a job's command line can pick them with plain strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "LossFn",
    "TrainConfig",
    "TrainConfigError",
    "build_optimizer",
    "lr_at",
    "resolve_loss",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainConfigError(ValueError):
    """The run cannot start: a bad setting, an empty dataset, a model that does not fit
    the loss. Raised before the first step, so no compute is spent on a doomed run."""


def _cross_entropy_class_last(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with classes on the last axis, so (N, C) classifiers and (B, T, V)
    language models share one convention. Float targets are class probabilities."""
    classes = outputs.shape[-1]
    if targets.is_floating_point():
        return F.cross_entropy(outputs.reshape(-1, classes), targets.reshape(-1, classes))
    return F.cross_entropy(outputs.reshape(-1, classes), targets.reshape(-1))


def _same_dtype(targets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Integer or double labels become the outputs' dtype (a no-op check per step)."""
    return targets if targets.dtype == outputs.dtype else targets.to(outputs.dtype)


def _binary_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(outputs, _same_dtype(targets, outputs))


def _binary_cross_entropy_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs, _same_dtype(targets, outputs))


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, _same_dtype(targets, outputs))


LOSSES: dict[str, LossFn] = {
    "bce": _binary_cross_entropy,  # on probabilities: the model ends in a sigmoid
    "bce_logits": _binary_cross_entropy_logits,  # on raw scores: numerically safer
    "cross_entropy": _cross_entropy_class_last,
    "mse": _mse,
}
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
_PRECISIONS = ("auto", "bf16", "fp32")
_MODES = ("min", "max")


def _names(options: Iterable[str]) -> str:
    return ", ".join(sorted(options))


@dataclass(frozen=True)
class TrainConfig:
    """Settings for one training run.

    >>> TrainConfig(loss="bce", optimizer="adam", lr=0.01, batch_size=4, epochs=10)

    `batch_size` is per process: under DDP with W workers a step sees W * batch_size
    samples (times `grad_accum_steps`). Checkpoints go to ``$KAON_CHECKPOINT_DIR`` when a
    Kaon job sets it, else to `checkpoint_dir`, else to ``<output_dir>/checkpoints``.
    """

    loss: str | LossFn = "mse"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float | None = None  # None: the optimizer's own default
    momentum: float = 0.9  # sgd only
    batch_size: int = 32
    eval_batch_size: int | None = None  # None: same as batch_size
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps, mid-epoch if need be
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    eval_every_steps: int | None = None  # besides the evaluation at each epoch's end
    early_stopping_patience: int | None = None  # evaluations without improvement
    early_stopping_metric: str = "val_loss"
    early_stopping_mode: str = "min"
    early_stopping_min_delta: float = 0.0
    seed: int = 0
    output_dir: str = "out"
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = None
    keep_checkpoints: int = 3
    checkpointing: bool = True  # False: no checkpoint is read or written, not even on SIGTERM
    resume: bool = True
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is present, else cpu
    precision: str = "auto"  # "auto": bf16 autocast on CUDA that supports it, else fp32
    compile: bool = False
    num_workers: int = 0
    log_every_steps: int | None = None
    tensorboard: bool = True
    progress: bool = True  # console output (a bar on a TTY, else a line per epoch)

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise TrainConfigError(problem)


def _problems(c: TrainConfig) -> Iterable[str]:
    """Every check yields a message; the first one is raised."""
    if isinstance(c.loss, str) and c.loss not in LOSSES:
        yield f"unknown loss {c.loss!r}; valid losses: {_names(LOSSES)}"
    if c.optimizer not in OPTIMIZERS:
        yield f"unknown optimizer {c.optimizer!r}; valid optimizers: {_names(OPTIMIZERS)}"
    if c.schedule not in SCHEDULES:
        yield f"unknown schedule {c.schedule!r}; valid schedules: {_names(SCHEDULES)}"
    if c.precision not in _PRECISIONS:
        yield f"unknown precision {c.precision!r}; valid: {_names(_PRECISIONS)}"
    if c.early_stopping_mode not in _MODES:
        yield f"early_stopping_mode must be 'min' or 'max', got {c.early_stopping_mode!r}"
    if not (isinstance(c.lr, int | float) and math.isfinite(c.lr) and c.lr > 0):
        yield f"lr must be a positive number, got {c.lr!r}"
    yield from _positive_ints(c)
    if c.weight_decay is not None and c.weight_decay < 0:
        yield f"weight_decay must be >= 0, got {c.weight_decay!r}"
    if c.clip_grad_norm is not None and c.clip_grad_norm <= 0:
        yield f"clip_grad_norm must be > 0, got {c.clip_grad_norm!r}"
    if c.checkpoint_every_seconds is not None and c.checkpoint_every_seconds <= 0:
        yield f"checkpoint_every_seconds must be > 0, got {c.checkpoint_every_seconds!r}"
    if not 0.0 <= c.min_lr_ratio <= 1.0:
        yield f"min_lr_ratio must be in [0, 1], got {c.min_lr_ratio!r}"
    if c.warmup_steps < 0 or c.num_workers < 0:
        yield "warmup_steps and num_workers must be >= 0"


def _positive_ints(c: TrainConfig) -> Iterable[str]:
    required = {
        "batch_size": c.batch_size,
        "epochs": c.epochs,
        "grad_accum_steps": c.grad_accum_steps,
        "keep_checkpoints": c.keep_checkpoints,
    }
    optional = {
        "eval_batch_size": c.eval_batch_size,
        "max_steps": c.max_steps,
        "eval_every_steps": c.eval_every_steps,
        "early_stopping_patience": c.early_stopping_patience,
        "checkpoint_every_steps": c.checkpoint_every_steps,
        "log_every_steps": c.log_every_steps,
    }
    for name, value in [*required.items(), *optional.items()]:
        if value is None and name in optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            yield f"{name} must be a positive integer, got {value!r}"


def resolve_loss(loss: str | LossFn) -> LossFn:
    return LOSSES[loss] if isinstance(loss, str) else loss


def loss_name(loss: str | LossFn) -> str:
    return loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)


def build_optimizer(
    config: TrainConfig, params: Iterable[torch.nn.Parameter], device: torch.device
) -> torch.optim.Optimizer:
    """The named optimizer; fused kernels on CUDA, where one launch updates every tensor."""
    fused = True if device.type == "cuda" else None
    extra: dict[str, Any] = {}
    if config.weight_decay is not None:
        extra["weight_decay"] = config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, fused=fused, **extra
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, fused=fused, **extra)
    return torch.optim.AdamW(params, lr=config.lr, fused=fused, **extra)


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warm-up from lr/warmup,
    then constant or a cosine decay that reaches lr * min_lr_ratio at the last step.

    A pure function of the step, so resuming needs no scheduler state beyond the step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, total_steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - floor)
