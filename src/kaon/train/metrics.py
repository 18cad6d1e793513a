"""Evaluation metrics: the user's functions, or built-ins by name.

A metric is ``fn(outputs, targets) -> number`` on one batch. The evaluation weights each
batch's value by its number of samples and averages, which is exact for means such as
accuracy and never holds a whole dataset's outputs in memory (a language model's logits
would not fit). Ranks add their sums together, so every rank sees the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from kaon.train.config import TrainConfigError

__all__ = ["MetricFn", "resolve_metrics"]

MetricFn = Callable[[torch.Tensor, torch.Tensor], "float | torch.Tensor"]


def _accuracy_from_probabilities(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs > 0.5) == (targets > 0.5)).float().mean()


def _accuracy_from_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs > 0) == (targets > 0.5)).float().mean()


def _accuracy_from_classes(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    keep = targets != -100
    return (outputs.argmax(-1)[keep] == targets[keep]).float().mean()


_ACCURACY: dict[str, MetricFn] = {
    "bce": _accuracy_from_probabilities,
    "bce_logits": _accuracy_from_logits,
    "cross_entropy": _accuracy_from_classes,
}
BUILTIN = ("accuracy",)


def resolve_metrics(
    metrics: Mapping[str, MetricFn] | Iterable[str] | None, loss: object
) -> dict[str, MetricFn]:
    """Names become built-ins that fit the loss: "accuracy" thresholds probabilities for
    "bce", logits at 0 for "bce_logits", and takes the arg-max for "cross_entropy"."""
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return dict(metrics)
    resolved: dict[str, MetricFn] = {}
    for name in metrics:
        if name not in BUILTIN:
            raise TrainConfigError(f"unknown metric {name!r}; built-in metrics: accuracy")
        if not isinstance(loss, str) or loss not in _ACCURACY:
            raise TrainConfigError(f"metric 'accuracy' needs a classification loss, not {loss!r}")
        resolved[name] = _ACCURACY[loss]
    return resolved
