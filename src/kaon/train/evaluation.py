"""Mean loss and metrics over a dataset, without gradients, across every rank.

Under DDP each rank takes a disjoint shard (`ShardSampler`: no padding repeats, which
would skew the mean), sums ``value * batch size`` on its device, and the ranks add their
sums; so every rank gets the same numbers, and evaluation reads the device once per
dataset rather than once per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kaon.train.checks import split_batch
from kaon.train.config import LossFn, TrainConfig
from kaon.train.data import eval_loader
from kaon.train.metrics import MetricFn
from kaon.train.runtime import Collectives, Runtime

__all__ = ["Evaluator"]


@dataclass(frozen=True)
class Evaluator:
    """Everything an evaluation needs, fixed when the trainer is built."""

    model: torch.nn.Module
    loss_fn: LossFn
    metrics: Mapping[str, MetricFn]
    runtime: Runtime
    collectives: Collectives
    config: TrainConfig
    collate_fn: Callable[[list[Any]], Any] | None

    def evaluate(self, data: Any) -> dict[str, float]:
        """{"loss": ..., metric name: ...} over `data`, in eval mode; the model's mode is
        put back afterwards. A collective: under DDP every rank calls it."""
        rank, world = self.collectives.place()
        batch_size = self.config.eval_batch_size or self.config.batch_size
        loader = eval_loader(
            data, batch_size, rank, world, self.config.num_workers, self.collate_fn
        )
        was_training = self.model.training
        self.model.eval()
        try:
            totals = self._sums(loader)
        finally:
            self.model.train(was_training)
        loss_sum, count, *metric_sums = self.collectives.sum(totals)
        results = {"loss": loss_sum / count}
        results |= {name: s / count for name, s in zip(self.metrics, metric_sums, strict=True)}
        return results

    def _sums(self, loader: Iterable[Any]) -> list[float]:
        """[loss * n, n, metric * n for each metric], summed on the device."""
        device = self.runtime.device
        totals = torch.zeros(2 + len(self.metrics), dtype=torch.float64, device=device)
        with torch.no_grad():
            for batch in loader:
                inputs, targets = split_batch(batch)
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = self._outputs(inputs)
                count = targets.shape[0]
                totals[0] += self.loss_fn(outputs, targets) * count
                totals[1] += count
                for i, metric in enumerate(self.metrics.values(), start=2):
                    totals[i] += torch.as_tensor(metric(outputs, targets)) * count
        return [float(v) for v in totals.tolist()]

    def _outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs in float32, under autocast when training uses it."""
        amp = self.runtime.amp_dtype
        if amp is None:
            out: torch.Tensor = self.model(inputs)
            return out
        with torch.autocast(self.runtime.device.type, dtype=amp):
            out = self.model(inputs)
        return out.float()
