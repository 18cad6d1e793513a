"""Where a run is, how long it is, and the losses it has not yet read.

`Progress` is the run's position and counters: the loop advances it every step, a
checkpoint stores it as plain numbers (``asdict``) and a resume reads it back
(``Progress(**saved)``). It is the one mutable record the loop owns; everything derived
from the config alone is the frozen `StepPlan`, fixed when the trainer is built.

`LossWindow` is why the hot loop stays on the device: each micro-batch's loss tensor is
kept, and they are summed and read (one GPU sync) only when something is logged, so no
step pays for an ``.item()``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from kaon.train.config import TrainConfig

__all__ = ["LossWindow", "Progress", "StepPlan", "plan_steps"]

_FOLD_LOSSES = 1024


@dataclass
class Progress:
    """Where the run is. Saved in every checkpoint; plain numbers only."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained on
    finished: bool = False  # recomputed on resume, so a longer run can continue this one
    stopped_early: bool = False
    best: float | None = None  # early stopping: best value of the watched metric
    bad_evals: int = 0  # early stopping: evaluations since it improved
    eval_step: int = -1  # the step of the latest evaluation
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each


@dataclass(frozen=True)
class StepPlan:
    """How long the run is, from the config and this rank's share of the data."""

    batches: int  # micro-batches per epoch on this rank
    total_steps: int  # optimizer steps in the whole run (what the LR schedule spans)
    scheduled: bool  # whether the learning rate changes from step to step
    samples_per_step: int  # across all ranks and micro-batches


def plan_steps(config: TrainConfig, samples_per_rank: int, world_size: int) -> StepPlan:
    batches = samples_per_rank // config.batch_size + bool(samples_per_rank % config.batch_size)
    steps_per_epoch = math.ceil(batches / config.grad_accum_steps)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return StepPlan(
        batches=batches,
        total_steps=total_steps,
        scheduled=config.schedule != "constant" or config.warmup_steps > 0,
        samples_per_step=config.batch_size * config.grad_accum_steps * world_size,
    )


class LossWindow:
    """The micro-batch losses and optimizer steps since the loss was last read."""

    def __init__(self, samples_per_step: int) -> None:
        self._samples_per_step = samples_per_step
        self._losses: list[torch.Tensor] = []
        self._steps = 0
        self._start = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        """Keep a detached loss: no sync, no kernel here."""
        self._losses.append(loss)
        if len(self._losses) == _FOLD_LOSSES:  # a long window: fold it, still without a sync
            self._losses[:] = [torch.stack(self._losses).sum()]

    def step_done(self) -> None:
        self._steps += 1

    def restart(self) -> None:
        """Start timing afresh: time spent evaluating or saving is not training time."""
        self._start = time.perf_counter()

    def flush(self, p: Progress) -> tuple[float, float]:
        """Read the losses summed on the device since the last read; (mean, samples/s).
        The sum also goes into the epoch's totals in `p`."""
        now = time.perf_counter()
        steps = self._steps
        total = self._total()
        rate = steps * self._samples_per_step / max(now - self._start, 1e-9)
        p.epoch_loss_sum += total
        p.epoch_loss_steps += steps
        self._losses.clear()
        self._steps = 0
        self._start = now
        return (total / steps if steps else math.nan), rate

    def mean(self) -> float:
        """The window's mean loss so far, without emptying it (for the progress bar)."""
        return self._total() / max(1, self._steps)

    def epoch_loss(self, p: Progress) -> float:
        """The mean loss of the epoch that just ended; resets the epoch's totals."""
        self.flush(p)
        mean = p.epoch_loss_sum / p.epoch_loss_steps if p.epoch_loss_steps else math.nan
        p.epoch_loss_sum, p.epoch_loss_steps = 0.0, 0
        return mean

    def _total(self) -> float:
        return float(torch.stack(self._losses).sum().item()) if self._losses else 0.0
