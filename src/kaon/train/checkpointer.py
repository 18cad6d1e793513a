"""The trainer's side of checkpoints: what goes into one, and how a run picks up from it.

`checkpoint` owns the files (atomic writes, manifests, skipping corrupt ones); this module
owns their meaning. A checkpoint holds the model, the optimizer, every rank's random state
and the data position (`Progress`), so a restarted job repeats at most the steps since it;
on a CPU the resumed run ends with bit-for-bit the weights of one that never stopped.

A checkpoint folder that holds another model's checkpoint (other parameter names or
shapes) or another configuration's (another optimizer) is refused with
`CheckpointMismatchError`, before anything is loaded. It is not skipped with a warning:
starting from scratch, this run's saves would prune the other run's checkpoints or mix
with them, and for a job the platform resumes, a silent fresh start would throw its
progress away. A mismatch is a user error (two runs sharing one folder), so the message
names the folder and the setting that chose it.

Resuming with another batch size or number of processes is allowed: the data position
within the epoch is carried over approximately, with a warning.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kaon.train import checkpoint as ckpt
from kaon.train.config import TrainConfig, TrainConfigError
from kaon.train.progress import Progress
from kaon.train.runtime import (
    Collectives,
    Runtime,
    get_rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = ["CheckpointMismatchError", "Checkpointer", "convert_position"]

_NAMES_SHOWN = 3


class CheckpointMismatchError(TrainConfigError):
    """The checkpoint to resume from belongs to another model or configuration. Raised by
    `fit()` before the first step, and before anything is loaded or deleted."""


class Checkpointer:
    """Finds, checks, restores and saves the checkpoints of one run. Rank 0 reads and
    writes the files; every method that takes part in a collective says so."""

    def __init__(
        self,
        config: TrainConfig,
        runtime: Runtime,
        collectives: Collectives,
        card: dict[str, Any],
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.root = ckpt.checkpoint_root(config)
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or loaded
        self._collectives = collectives
        self._card = card
        self._last_save = time.monotonic()

    def latest(self) -> Path | None:
        """The checkpoint to resume from, or None to start fresh. A collective: rank 0
        looks, and every rank gets its answer, so all load the same checkpoint."""
        path: str | None = None
        if self.runtime.is_main and self.config.checkpointing and self.config.resume:
            ckpt.clean_temporary(self.root)
            found = ckpt.latest_valid(self.root)
            path = str(found) if found else None
        path = self._collectives.broadcast(path)
        return None if path is None else Path(path)

    def restore(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> Progress:
        """Load `path` into the model and the optimizer and put back the random state;
        returns the run's progress. Raises `CheckpointMismatchError` for another run's."""
        model_state, state = ckpt.load_checkpoint(path, self.runtime.device)
        assert state is not None
        self._refuse_another_runs(path, model, optimizer, model_state, state)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        p = Progress(**state["progress"])
        p.finished = p.stopped_early or p.epoch >= self.config.epochs
        p.finished |= self.config.max_steps is not None and p.step >= self.config.max_steps
        self._restore_rng(state["rng"], p.step)
        saved_shape = (state["batch_size"], state["world_size"])
        if saved_shape != (self.config.batch_size, self.runtime.world_size):
            p.batch_in_epoch = convert_position(self.config, self.runtime, p, *saved_shape)
        self.saved_step = p.step
        return p

    def _restore_rng(self, states: list[dict[str, Any]], step: int) -> None:
        """This rank's saved random state; with another number of ranks, a fresh seed."""
        rank, world = self.runtime.rank, self.runtime.world_size
        if len(states) == world:
            set_rng_state(states[rank], self.runtime.device)
        else:
            seed_everything(self.config.seed + rank + step)

    def _refuse_another_runs(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        model_state: Mapping[str, torch.Tensor],
        train_state: Mapping[str, Any],
    ) -> None:
        problem = _model_mismatch(model.state_dict(), model_state)
        whose = "another model"
        if problem is None:
            problem = _optimizer_mismatch(optimizer, train_state)
            whose = "another configuration"
        if problem is not None:
            raise CheckpointMismatchError(
                f"checkpoint folder {self.root} holds a checkpoint of {whose} "
                f"({path.name}: {problem}); point {ckpt.root_setting(self.config)} "
                "elsewhere or delete the folder"
            )

    def restart_clock(self) -> None:
        """Count `checkpoint_every_seconds` from now."""
        self._last_save = time.monotonic()

    def time_due(self) -> bool:
        every = self.config.checkpoint_every_seconds
        return every is not None and time.monotonic() - self._last_save >= every

    def save(self, p: Progress, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write a checkpoint for step `p.step`. A collective: every rank gives its random
        state, rank 0 writes."""
        rng = self._collectives.gather(get_rng_state(self.runtime.device))
        if self.runtime.is_main:
            card = self._card | {"step": p.step, "metrics": dict(p.metrics)}
            ckpt.save_checkpoint(
                self.root,
                p.step,
                model.state_dict(),
                self._train_state(p, optimizer, rng),
                card,
                self.config.keep_checkpoints,
            )
        self.saved_step = p.step
        self._last_save = time.monotonic()

    def _train_state(
        self, p: Progress, optimizer: torch.optim.Optimizer, rng: list[Any]
    ) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "progress": asdict(p),
            "optimizer": optimizer.state_dict(),
            "optimizer_class": type(optimizer).__name__,  # to refuse another optimizer's
            "rng": rng,
            "batch_size": self.config.batch_size,
            "world_size": self.runtime.world_size,
        }


def convert_position(
    config: TrainConfig, runtime: Runtime, p: Progress, batch_size: int, world: int
) -> int:
    """The micro-batch within the epoch that `p`, saved with `batch_size` on `world`
    processes, reaches with this run's batch size and processes: the same number of
    samples, rounded down to a whole optimizer step."""
    warnings.warn(
        f"the checkpoint was written with batch_size {batch_size} on {world} processes; "
        "the data position within the epoch is carried over approximately",
        stacklevel=3,  # the trainer line that resumes
    )
    samples = p.batch_in_epoch * batch_size * world
    batches = samples // (config.batch_size * runtime.world_size)
    return batches - batches % config.grad_accum_steps


def _model_mismatch(
    ours: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]
) -> str | None:
    """How the saved state_dict differs from this model's in names or shapes, or None."""
    extra = [name for name in saved if name not in ours]
    missing = [name for name in ours if name not in saved]
    if extra or missing:
        parts = [f"it has {_some(extra)} that this model lacks"] if extra else []
        parts += [f"this model has {_some(missing)} that it lacks"] if missing else []
        return "; ".join(parts)
    reshaped = [name for name in ours if ours[name].shape != saved[name].shape]
    if not reshaped:
        return None
    first = reshaped[0]
    more = f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
    return (
        f"{first} has shape {tuple(saved[first].shape)} in it, "
        f"{tuple(ours[first].shape)} in this model{more}"
    )


def _optimizer_mismatch(
    optimizer: torch.optim.Optimizer, train_state: Mapping[str, Any]
) -> str | None:
    """How the saved optimizer differs from this one in kind or in what it updates, or
    None. Checkpoints written before the class was recorded are checked by size alone."""
    saved_class = train_state.get("optimizer_class")
    if saved_class is not None and saved_class != type(optimizer).__name__:
        return f"optimizer {saved_class} in it, {type(optimizer).__name__} in this run"
    saved = [len(group["params"]) for group in train_state["optimizer"]["param_groups"]]
    ours = [len(group["params"]) for group in optimizer.param_groups]
    if saved != ours:
        return f"its optimizer updates {sum(saved)} tensors, this run's {sum(ours)}"
    return None


def _some(names: list[str]) -> str:
    """The first few names, and how many more."""
    shown = ", ".join(names[:_NAMES_SHOWN])
    rest = len(names) - _NAMES_SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown
