"""The training loop: `Trainer(model, train_data, val_data, config).fit()`.

Read `Trainer.fit` and `Trainer._train_epoch` top to bottom. As in torchtitan, the parts
the loop calls live beside it: `progress` (position, step plan, loss window),
`checkpointer` (save, resume, refuse another run's), `evaluation`, `early_stopping`,
`preemption` (SIGTERM), `forward` (model and loss, compiled and DDP-wrapped), `model_card`.

What the loop promises:

- **It fails before it starts.** The constructor checks the config, the datasets and a
  dry forward pass of the model (see `checks`), so a typo costs seconds, not a GPU-hour.
  A checkpoint folder holding another model's checkpoint is refused before the first step.
- **It picks up where it stopped.** Each checkpoint holds the model, the optimizer, every
  rank's random state and the data position (epoch, batch within the epoch). `fit()`
  loads the newest valid one, so a restarted job repeats at most the steps since it; on
  a CPU the resumed run ends with bit-for-bit the weights of one that never stopped.
- **SIGTERM is a request, not a crash.** The current step finishes, a checkpoint is
  written, and `Preempted` exits the process with code 75, which the platform reads as
  "preempted, resume me".
- **The hot loop stays on the device.** Each step's loss tensor is kept and they are
  summed and read (one GPU sync) only when something is logged; no ``.item()`` per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from kaon.core.jobs import EXIT_CODE_RESUME
from kaon.train.checkpointer import Checkpointer
from kaon.train.checks import check_datasets, check_model
from kaon.train.config import TrainConfig, TrainConfigError, build_optimizer, lr_at, resolve_loss
from kaon.train.data import train_loader
from kaon.train.early_stopping import check_early_stopping, update_early_stopping
from kaon.train.evaluation import Evaluator
from kaon.train.forward import build_forward_loss
from kaon.train.metrics import MetricFn, resolve_metrics
from kaon.train.model_card import model_card
from kaon.train.preemption import Preempted, SigtermFlag
from kaon.train.progress import LossWindow, Progress, plan_steps
from kaon.train.reporting import Reporter
from kaon.train.runtime import Collectives, seed_everything, setup_runtime

__all__ = ["Preempted", "Trainer"]

_NO_CONTEXT = contextlib.nullcontext()


class Trainer:
    """Trains a PyTorch model on a map-style dataset of (input, target) pairs.

    >>> trainer = Trainer(model, train_data=ds, val_data=val_ds,
    ...                   config=TrainConfig(loss="bce", optimizer="adam", lr=0.01,
    ...                                      batch_size=4, epochs=10),
    ...                   metrics=["accuracy"])
    >>> result = trainer.fit()      # {"val_loss": ..., "val_accuracy": ..., "step": ...}
    >>> trainer.evaluate(test_ds)   # {"loss": ..., "accuracy": ...}

    `metrics` maps names to ``fn(outputs, targets) -> number`` or lists built-in names
    ("accuracy"). `model_factory` ("module:callable") and `model_kwargs` go into the model
    card so a predictor can rebuild the model from a checkpoint; by default the model's
    own class is used when it can be imported.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_data: Any,
        val_data: Any | None = None,
        config: TrainConfig | None = None,
        metrics: Mapping[str, MetricFn] | Iterable[str] | None = None,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        model_factory: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        self.model = model
        self.runtime = rt = setup_runtime(cfg)
        # Checks first: a run that cannot start fails here, in seconds, having written nothing.
        check_datasets(cfg, train_data, val_data, rt)
        self._metrics = resolve_metrics(metrics, cfg.loss)
        check_early_stopping(cfg, self._metrics)
        self._loss_fn = resolve_loss(cfg.loss)
        self._val_data = val_data
        self._has_val = val_data is not None
        model.to(rt.device)
        inputs, outputs = check_model(model, train_data, cfg, self._loss_fn, rt.device, collate_fn)
        card = model_card(cfg, model, inputs, outputs, model_factory, model_kwargs)
        # Then the parts, in the order the ranks must build them (DDP's is a collective).
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, self._params, rt.device)
        self._collectives = Collectives(rt)
        self._forward_loss, self._ddp = build_forward_loss(model, self._loss_fn, rt, cfg.compile)
        self._loader, self._sampler = train_loader(
            train_data, cfg.batch_size, rt, cfg.seed, cfg.num_workers, collate_fn
        )
        self._evaluator = Evaluator(
            model, self._loss_fn, self._metrics, rt, self._collectives, cfg, collate_fn
        )
        self._reporter = Reporter(rt.is_main, cfg.output_dir, cfg.tensorboard, cfg.progress)
        self._plan = plan_steps(cfg, len(self._sampler), rt.world_size)
        self._window = LossWindow(self._plan.samples_per_step)
        self._copy_batches = rt.device.type != "cpu"  # the loader yields CPU tensors
        self._sigterm = SigtermFlag()
        self._checkpointer = Checkpointer(cfg, rt, self._collectives, card)
        self.checkpoint_dir = self._checkpointer.root

    @property
    def history(self) -> list[dict[str, float]]:
        """Every point logged so far (rank 0), each with its "step"."""
        return self._reporter.history

    # The loop ------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train until `epochs`, `max_steps` or early stopping; return the latest metrics.

        Starts from the newest valid checkpoint when there is one (and raises
        `CheckpointMismatchError`, before the first step, when it is another model's). On
        SIGTERM: finishes the step, saves a checkpoint and raises `Preempted` (exit 75)."""
        progress = self._start()
        with self._sigterm.installed():
            while not progress.finished:
                self._train_epoch(progress)
        return self._finish(progress)

    def _train_epoch(self, p: Progress) -> None:
        """Train on the rest of epoch `p.epoch`, starting where `p` says it stopped."""
        cfg, device = self.config, self.runtime.device
        self._sampler.set_position(p.epoch, p.batch_in_epoch * cfg.batch_size)
        self._loader.generator.manual_seed(cfg.seed + p.epoch)
        left = len(self._loader)
        group = min(cfg.grad_accum_steps, left)  # micro-batches in this optimizer step
        micro = 0
        for inputs, targets in self._loader:
            if self._copy_batches:
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
            micro += 1
            self._forward_backward(inputs, targets, group, last=micro == group)
            if micro < group:
                continue
            self._optimizer_step(p.step)
            p.step += 1
            p.batch_in_epoch += micro
            left -= micro
            micro, group = 0, min(cfg.grad_accum_steps, left)
            self._reporter.bar(
                p.epoch, cfg.epochs, p.batch_in_epoch, self._plan.batches, self._window.mean
            )
            if self._after_step(p):
                return
        self._end_epoch(p)

    def _forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, group: int, last: bool
    ) -> None:
        # Under DDP every backward() all-reduces the gradients across ranks. Before the
        # last micro-step of an accumulation the gradients are partial sums that nobody
        # reads, so no_sync() keeps them local; the last backward() then syncs the total
        # once instead of `group` times, which saves (group - 1) all-reduces per step.
        sync = _NO_CONTEXT if last or self._ddp is None else self._ddp.no_sync()
        with sync:
            loss = self._forward_loss(inputs, targets)
            if group > 1:
                loss = loss / group  # the step's loss is the mean over its micro-batches
            loss.backward()  # type: ignore[no-untyped-call]
        self._window.add(loss.detach())  # read when logged: no sync, no kernel here

    def _optimizer_step(self, step: int) -> None:
        cfg = self.config
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, cfg.clip_grad_norm)
        if self._plan.scheduled:
            lr = lr_at(cfg, step, self._plan.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window.step_done()

    def _after_step(self, p: Progress) -> bool:
        """Log, evaluate, checkpoint, stop: the per-step bookkeeping. True ends the epoch."""
        cfg = self.config
        if cfg.log_every_steps and p.step % cfg.log_every_steps == 0:
            self._log_steps(p)
        if cfg.eval_every_steps and p.step % cfg.eval_every_steps == 0 and self._has_val:
            self._reporter.log(p.step, self._validate(p), "eval")
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            p.finished = True
        # Both flags are agreed on by all ranks, or they would stop at different steps.
        stop, time_due = self._collectives.any(
            self._sigterm.requested, self._checkpointer.time_due()
        )
        stop = stop and not p.finished  # the last step is done: just finish normally
        steps_due = cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0
        if stop or steps_due or time_due:
            self._save(p)
        if stop:
            self._preempt(p)
        return p.finished

    def _end_epoch(self, p: Progress) -> None:
        values = {"epoch": float(p.epoch + 1), "loss": self._window.epoch_loss(p)}
        p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        p.metrics["loss"] = values["loss"]
        if self._val_data is not None:
            values |= self._validate(p)
        self._reporter.log(p.step, values, f"epoch {p.epoch}/{self.config.epochs}")
        if p.epoch >= self.config.epochs:
            p.finished = True

    # Evaluation and logging ----------------------------------------------------------

    def evaluate(self, dataset: Any | None = None) -> dict[str, float]:
        """Mean loss and metrics over `dataset` (default: val_data), without gradients.
        Under DDP each rank takes a shard and the sums are added up."""
        data = dataset if dataset is not None else self._val_data
        if data is None:
            raise TrainConfigError("nothing to evaluate: pass a dataset or give val_data")
        return self._evaluator.evaluate(data)

    def _validate(self, p: Progress) -> dict[str, float]:
        self._window.flush(p)
        results = {f"val_{name}": value for name, value in self.evaluate().items()}
        p.metrics |= results
        p.eval_step = p.step
        watched = results[self.config.early_stopping_metric]
        stopped = update_early_stopping(self.config, p, watched)
        if stopped:
            self._reporter.message(stopped)
        self._window.restart()  # evaluation time is not training time
        return results

    def _log_steps(self, p: Progress) -> None:
        loss, rate = self._window.flush(p)
        lr = self.optimizer.param_groups[0]["lr"]
        values = {"loss": loss, "lr": float(lr), "samples_per_s": rate}
        p.metrics["loss"] = loss
        self._reporter.log(p.step, values, "train")

    # Start, checkpoints, stop --------------------------------------------------------

    def _start(self) -> Progress:
        """Resume from the newest valid checkpoint, or seed a fresh run."""
        path = self._checkpointer.latest()  # every rank loads the same checkpoint
        if path is None:
            seed_everything(self.config.seed + self.runtime.rank)
            progress = Progress()
            self._reporter.message(self._describe())
        else:
            progress = self._checkpointer.restore(path, self.model, self.optimizer)
            self._reporter.message(
                f"resumed from {path.name}: step {progress.step}, epoch {progress.epoch + 1}, "
                f"batch {progress.batch_in_epoch} of the epoch"
            )
        self._window.restart()
        self._checkpointer.restart_clock()
        return progress

    def _describe(self) -> str:
        rt, plan = self.runtime, self._plan
        precision = "float32" if rt.amp_dtype is None else f"{rt.amp_dtype} autocast"
        return (
            f"training on {rt.device} ({precision}), {rt.world_size} process(es): "
            f"{plan.total_steps} steps of {plan.samples_per_step} samples"
        )

    def _save(self, p: Progress) -> None:
        """Write a checkpoint for step `p.step` (rank 0 writes; every rank must call)."""
        if not self.config.checkpointing:
            return
        self._window.flush(p)
        self._checkpointer.save(p, self.model, self.optimizer)
        self._window.restart()  # saving time is not training time

    def _preempt(self, p: Progress) -> None:
        self._collectives.barrier()  # nobody exits before rank 0 has written the checkpoint
        self._reporter.message(
            f"SIGTERM: stopped after step {p.step} with a checkpoint; "
            f"exiting with code {EXIT_CODE_RESUME} to be resumed"
        )
        self._close()
        raise Preempted(p.step)

    def _finish(self, p: Progress) -> dict[str, float]:
        if self._val_data is not None and p.eval_step != p.step:
            self._reporter.log(p.step, self._validate(p), "eval")
        if self._checkpointer.saved_step != p.step:
            self._save(p)
        self._collectives.barrier()
        self._close()
        return {"step": float(p.step), "epoch": float(p.epoch), **p.metrics}

    def _close(self) -> None:
        self._reporter.close()
        self._collectives.close()
