"""The training loop: `Trainer(model, train_data, val_data, config).fit()`.

Read `Trainer.fit` and `Trainer._train_epoch` top to bottom; everything else is a helper
they call. What the loop promises:

- **It fails before it starts.** The constructor checks the config, the datasets and a
  dry forward pass of the model (see `checks`), so a typo costs seconds, not a GPU-hour.
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
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from kaon.core.jobs import EXIT_CODE_RESUME
from kaon.train import checkpoint as ckpt
from kaon.train.checks import check_datasets, check_model, split_batch
from kaon.train.config import (
    LossFn,
    TrainConfig,
    TrainConfigError,
    build_optimizer,
    loss_name,
    lr_at,
    resolve_loss,
)
from kaon.train.data import eval_loader, train_loader
from kaon.train.metrics import MetricFn, resolve_metrics
from kaon.train.reporting import Reporter
from kaon.train.runtime import (
    Collectives,
    Runtime,
    get_rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
)

__all__ = ["Preempted", "Trainer"]

_NO_CONTEXT = contextlib.nullcontext()
_FOLD_LOSSES = 1024


class Preempted(SystemExit):
    """Raised by `fit()` after SIGTERM, once the checkpoint is on disk. Left uncaught it
    ends the process with `EXIT_CODE_RESUME` (75): "preempted, resume me"."""

    def __init__(self, step: int) -> None:
        super().__init__(EXIT_CODE_RESUME)
        self.step = step


@dataclass
class _Progress:
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


class _ForwardLoss(torch.nn.Module):
    """The model and the loss as one module: `torch.compile` then fuses the loss (for a
    language model, a softmax over the vocabulary) into the forward graph, and DDP wraps
    a module whose output is the loss."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, runtime: Runtime) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.device_type = runtime.device.type
        self.amp_dtype = runtime.amp_dtype

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is None:
            return self.loss_fn(self.model(inputs), targets)
        with torch.autocast(self.device_type, dtype=self.amp_dtype):
            outputs = self.model(inputs)
        # The loss runs outside autocast, in float32: a reduction over many terms needs
        # the precision, and binary cross-entropy refuses to autocast at all.
        return self.loss_fn(outputs.float(), targets)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop reads after each step."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


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
        self.runtime = setup_runtime(cfg)
        check_datasets(cfg, train_data, val_data, self.runtime)
        self._metrics = resolve_metrics(metrics, cfg.loss)
        _check_early_stopping(cfg, self._metrics)
        self._loss_fn = resolve_loss(cfg.loss)
        self._val_data = val_data
        self._has_val = val_data is not None
        self._collate_fn = collate_fn
        model.to(self.runtime.device)
        inputs, outputs = check_model(
            model, train_data, cfg, self._loss_fn, self.runtime.device, collate_fn
        )
        self._card = _model_card(cfg, model, inputs, outputs, model_factory, model_kwargs)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, self._params, self.runtime.device)
        self._collectives = Collectives(self.runtime)
        self._forward_loss, self._ddp = self._build_forward_loss()
        self._loader, self._sampler = train_loader(
            train_data, cfg.batch_size, self.runtime, cfg.seed, cfg.num_workers, collate_fn
        )
        self._reporter = Reporter(
            self.runtime.is_main, cfg.output_dir, cfg.tensorboard, cfg.progress
        )
        self._plan_steps()
        self._losses: list[torch.Tensor] = []  # this log window's micro-batch losses
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self._copy_batches = self.runtime.device.type != "cpu"  # the loader yields CPU tensors
        self._last_save = time.monotonic()
        self._saved_step = -1
        self._sigterm = _SigtermFlag()
        self.checkpoint_dir = ckpt.checkpoint_root(cfg)

    @property
    def history(self) -> list[dict[str, float]]:
        """Every point logged so far (rank 0), each with its "step"."""
        return self._reporter.history

    # The loop ------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train until `epochs`, `max_steps` or early stopping; return the latest metrics.

        Starts from the newest valid checkpoint when there is one. On SIGTERM: finishes
        the step, saves a checkpoint and raises `Preempted` (exit code 75)."""
        progress = self._start()
        with self._sigterm.installed():
            while not progress.finished:
                self._train_epoch(progress)
        return self._finish(progress)

    def _train_epoch(self, p: _Progress) -> None:
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
            self._reporter.bar(p.epoch, cfg.epochs, p.batch_in_epoch, self._batches, self._mean)
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
        self._losses.append(loss.detach())  # read when logged: no sync, no kernel here
        if len(self._losses) == _FOLD_LOSSES:  # a long window: fold it, still without a sync
            self._losses[:] = [torch.stack(self._losses).sum()]

    def _optimizer_step(self, step: int) -> None:
        cfg = self.config
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, cfg.clip_grad_norm)
        if self._scheduled:
            lr = lr_at(cfg, step, self._total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window_steps += 1

    def _after_step(self, p: _Progress) -> bool:
        """Log, evaluate, checkpoint, stop: the per-step bookkeeping. True ends the epoch."""
        cfg = self.config
        if cfg.log_every_steps and p.step % cfg.log_every_steps == 0:
            self._log_steps(p)
        if cfg.eval_every_steps and p.step % cfg.eval_every_steps == 0 and self._has_val:
            self._reporter.log(p.step, self._validate(p), "eval")
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            p.finished = True
        # Both flags are agreed on by all ranks, or they would stop at different steps.
        stop, time_due = self._collectives.any(self._sigterm.requested, self._time_due())
        stop = stop and not p.finished  # the last step is done: just finish normally
        steps_due = cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0
        if stop or steps_due or time_due:
            self._save(p)
        if stop:
            self._preempt(p)
        return p.finished

    def _end_epoch(self, p: _Progress) -> None:
        values = {"epoch": float(p.epoch + 1), "loss": self._epoch_loss(p)}
        p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        p.metrics["loss"] = values["loss"]
        if self._val_data is not None:
            values |= self._validate(p)
        self._reporter.log(p.step, values, f"epoch {p.epoch}/{self.config.epochs}")
        if p.epoch >= self.config.epochs:
            p.finished = True

    # Evaluation and early stopping ---------------------------------------------------

    def evaluate(self, dataset: Any | None = None) -> dict[str, float]:
        """Mean loss and metrics over `dataset` (default: val_data), without gradients.
        Under DDP each rank takes a shard and the sums are added up."""
        data = dataset if dataset is not None else self._val_data
        if data is None:
            raise TrainConfigError("nothing to evaluate: pass a dataset or give val_data")
        rank, world = self._collectives.place()
        batch_size = self.config.eval_batch_size or self.config.batch_size
        loader = eval_loader(
            data, batch_size, rank, world, self.config.num_workers, self._collate_fn
        )
        was_training = self.model.training
        self.model.eval()
        try:
            totals = self._evaluation_sums(loader)
        finally:
            self.model.train(was_training)
        loss_sum, count, *metric_sums = self._collectives.sum(totals)
        results = {"loss": loss_sum / count}
        results |= {name: s / count for name, s in zip(self._metrics, metric_sums, strict=True)}
        return results

    def _evaluation_sums(self, loader: Iterable[Any]) -> list[float]:
        """[loss * n, n, metric * n for each metric], summed on the device."""
        device = self.runtime.device
        totals = torch.zeros(2 + len(self._metrics), dtype=torch.float64, device=device)
        with torch.no_grad():
            for batch in loader:
                inputs, targets = split_batch(batch)
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = self._outputs(inputs)
                count = targets.shape[0]
                totals[0] += self._loss_fn(outputs, targets) * count
                totals[1] += count
                for i, metric in enumerate(self._metrics.values(), start=2):
                    totals[i] += torch.as_tensor(metric(outputs, targets)) * count
        return [float(v) for v in totals.tolist()]

    def _outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        amp = self.runtime.amp_dtype
        if amp is None:
            out: torch.Tensor = self.model(inputs)
            return out
        with torch.autocast(self.runtime.device.type, dtype=amp):
            out = self.model(inputs)
        return out.float()

    def _validate(self, p: _Progress) -> dict[str, float]:
        self._flush_window(p)
        results = {f"val_{name}": value for name, value in self.evaluate().items()}
        p.metrics |= results
        p.eval_step = p.step
        self._update_early_stopping(p, results[self.config.early_stopping_metric])
        self._window_start = time.perf_counter()  # evaluation time is not training time
        return results

    def _update_early_stopping(self, p: _Progress, value: float) -> None:
        cfg = self.config
        if cfg.early_stopping_patience is None:
            return
        delta = cfg.early_stopping_min_delta
        if cfg.early_stopping_mode == "min":
            improved = p.best is None or value < p.best - delta
        else:
            improved = p.best is None or value > p.best + delta
        if improved:
            p.best, p.bad_evals = value, 0
            return
        p.bad_evals += 1
        if p.bad_evals >= cfg.early_stopping_patience:
            p.finished = p.stopped_early = True
            self._reporter.message(
                f"early stopping at step {p.step}: {cfg.early_stopping_metric} has not "
                f"improved on {p.best:.4g} for {p.bad_evals} evaluations"
            )

    # Losses and logging --------------------------------------------------------------

    def _flush_window(self, p: _Progress) -> tuple[float, float]:
        """Read the losses summed on the device since the last read; (mean, samples/s)."""
        now = time.perf_counter()
        steps = self._window_steps
        total = float(torch.stack(self._losses).sum().item()) if self._losses else 0.0
        rate = steps * self._samples_per_step / max(now - self._window_start, 1e-9)
        p.epoch_loss_sum += total
        p.epoch_loss_steps += steps
        self._losses.clear()
        self._window_steps = 0
        self._window_start = now
        return (total / steps if steps else math.nan), rate

    def _mean(self) -> float:
        total = float(torch.stack(self._losses).sum().item()) if self._losses else 0.0
        return total / max(1, self._window_steps)

    def _epoch_loss(self, p: _Progress) -> float:
        self._flush_window(p)
        mean = p.epoch_loss_sum / p.epoch_loss_steps if p.epoch_loss_steps else math.nan
        p.epoch_loss_sum, p.epoch_loss_steps = 0.0, 0
        return mean

    def _log_steps(self, p: _Progress) -> None:
        loss, rate = self._flush_window(p)
        lr = self.optimizer.param_groups[0]["lr"]
        values = {"loss": loss, "lr": float(lr), "samples_per_s": rate}
        p.metrics["loss"] = loss
        self._reporter.log(p.step, values, "train")

    # Start, checkpoints, stop --------------------------------------------------------

    def _start(self) -> _Progress:
        """Resume from the newest valid checkpoint, or seed a fresh run."""
        path: str | None = None
        if self.runtime.is_main and self.config.checkpointing and self.config.resume:
            ckpt.clean_temporary(self.checkpoint_dir)
            found = ckpt.latest_valid(self.checkpoint_dir)
            path = str(found) if found else None
        path = self._collectives.broadcast(path)  # every rank loads the same checkpoint
        if path is None:
            seed_everything(self.config.seed + self.runtime.rank)
            progress = _Progress()
            self._reporter.message(self._describe())
        else:
            progress = self._restore(Path(path))
        self._window_start = time.perf_counter()
        self._last_save = time.monotonic()
        return progress

    def _describe(self) -> str:
        rt = self.runtime
        precision = "float32" if rt.amp_dtype is None else f"{rt.amp_dtype} autocast"
        return (
            f"training on {rt.device} ({precision}), {rt.world_size} process(es): "
            f"{self._total_steps} steps of {self._samples_per_step} samples"
        )

    def _restore(self, path: Path) -> _Progress:
        model_state, state = ckpt.load_checkpoint(path, self.runtime.device)
        assert state is not None
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        p = _Progress(**state["progress"])
        p.finished = p.stopped_early or p.epoch >= self.config.epochs
        p.finished |= self.config.max_steps is not None and p.step >= self.config.max_steps
        rank, world = self.runtime.rank, self.runtime.world_size
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank], self.runtime.device)
        else:
            seed_everything(self.config.seed + rank + p.step)
        if (state["batch_size"], state["world_size"]) != (self.config.batch_size, world):
            p.batch_in_epoch = self._convert_position(p, state["batch_size"], state["world_size"])
        self._saved_step = p.step
        self._reporter.message(
            f"resumed from {path.name}: step {p.step}, epoch {p.epoch + 1}, "
            f"batch {p.batch_in_epoch} of the epoch"
        )
        return p

    def _convert_position(self, p: _Progress, batch_size: int, world: int) -> int:
        warnings.warn(
            f"the checkpoint was written with batch_size {batch_size} on {world} processes; "
            "the data position within the epoch is carried over approximately",
            stacklevel=3,
        )
        samples = p.batch_in_epoch * batch_size * world
        batches = samples // (self.config.batch_size * self.runtime.world_size)
        return batches - batches % self.config.grad_accum_steps

    def _time_due(self) -> bool:
        every = self.config.checkpoint_every_seconds
        return every is not None and time.monotonic() - self._last_save >= every

    def _save(self, p: _Progress) -> None:
        """Write a checkpoint for step `p.step` (rank 0 writes; every rank must call)."""
        if not self.config.checkpointing:
            return
        self._flush_window(p)
        rng = self._collectives.gather(get_rng_state(self.runtime.device))
        if self.runtime.is_main:
            train_state = {
                "format": ckpt.FORMAT,
                "progress": asdict(p),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "batch_size": self.config.batch_size,
                "world_size": self.runtime.world_size,
            }
            card = self._card | {"step": p.step, "metrics": dict(p.metrics)}
            ckpt.save_checkpoint(
                self.checkpoint_dir,
                p.step,
                self.model.state_dict(),
                train_state,
                card,
                self.config.keep_checkpoints,
            )
        self._saved_step = p.step
        self._last_save = time.monotonic()
        self._window_start = time.perf_counter()  # saving time is not training time

    def _preempt(self, p: _Progress) -> None:
        self._collectives.barrier()  # nobody exits before rank 0 has written the checkpoint
        self._reporter.message(
            f"SIGTERM: stopped after step {p.step} with a checkpoint; "
            f"exiting with code {EXIT_CODE_RESUME} to be resumed"
        )
        self._close()
        raise Preempted(p.step)

    def _finish(self, p: _Progress) -> dict[str, float]:
        if self._val_data is not None and p.eval_step != p.step:
            self._reporter.log(p.step, self._validate(p), "eval")
        if self._saved_step != p.step:
            self._save(p)
        self._collectives.barrier()
        self._close()
        return {"step": float(p.step), "epoch": float(p.epoch), **p.metrics}

    def _close(self) -> None:
        self._reporter.close()
        self._collectives.close()

    # Setup helpers -------------------------------------------------------------------

    def _build_forward_loss(
        self,
    ) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Any]:
        """The function the loop calls for the loss: compiled and DDP-wrapped as asked.
        Plain runs call the bound `forward`, skipping one module-call's overhead."""
        module = _ForwardLoss(self.model, self._loss_fn, self.runtime)
        if not self.config.compile and not self.runtime.distributed:
            return module.forward, None
        wrapped: Any = torch.compile(module) if self.config.compile else module
        if not self.runtime.distributed:
            return wrapped, None
        device = self.runtime.device
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(wrapped, device_ids=ids)
        return ddp, ddp

    def _plan_steps(self) -> None:
        cfg = self.config
        self._batches = len(self._sampler) // cfg.batch_size + bool(
            len(self._sampler) % cfg.batch_size
        )
        steps_per_epoch = math.ceil(self._batches / cfg.grad_accum_steps)
        self._total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            self._total_steps = min(self._total_steps, cfg.max_steps)
        self._scheduled = cfg.schedule != "constant" or cfg.warmup_steps > 0
        world = self.runtime.world_size
        self._samples_per_step = cfg.batch_size * cfg.grad_accum_steps * world


def _check_early_stopping(config: TrainConfig, metrics: Mapping[str, MetricFn]) -> None:
    if config.early_stopping_patience is None:
        return
    valid = ["val_loss", *(f"val_{name}" for name in metrics)]
    if config.early_stopping_metric not in valid:
        raise TrainConfigError(
            f"early_stopping_metric {config.early_stopping_metric!r} is not computed; "
            f"valid: {', '.join(valid)}"
        )


def _model_card(
    config: TrainConfig,
    model: torch.nn.Module,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    factory: str | None,
    kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What a predictor needs to rebuild and call the model, saved beside the weights."""
    return {
        "format": ckpt.FORMAT,
        "factory": factory or _importable_name(model),
        "factory_kwargs": dict(kwargs or {}),
        "input_shape": list(inputs.shape[1:]),
        "input_dtype": str(inputs.dtype).removeprefix("torch."),
        "output_shape": list(outputs.shape[1:]),
        "loss": loss_name(config.loss),
        "torch_version": torch.__version__,
    }


def _importable_name(model: torch.nn.Module) -> str | None:
    """The model's class as "module:Class" when it can be imported by name. Not for classes in
    `__main__` or a function, and not for torch's own (an empty Sequential is no use)."""
    cls = type(model)
    module, name = cls.__module__, cls.__qualname__
    if module == "__main__" or "<locals>" in name or module.split(".")[0] == "torch":
        return None
    return f"{module}:{name}"
