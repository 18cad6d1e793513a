"""Early stopping: end the run once a validation metric stops improving.

The watched metric is checked when the trainer is built, so a typo in its name fails
before the first step rather than at the first evaluation. Its state (the best value and
the evaluations since) lives in `Progress`, so a resumed run keeps counting where the
stopped one was instead of granting itself fresh patience.
"""

from __future__ import annotations

from collections.abc import Mapping

from kaon.train.config import TrainConfig, TrainConfigError
from kaon.train.metrics import MetricFn
from kaon.train.progress import Progress

__all__ = ["check_early_stopping", "update_early_stopping"]


def check_early_stopping(config: TrainConfig, metrics: Mapping[str, MetricFn]) -> None:
    """Refuse a watched metric that no evaluation computes (even with no patience set: the
    metric is still read after every validation)."""
    valid = ["val_loss", *(f"val_{name}" for name in metrics)]
    if config.early_stopping_metric not in valid:
        raise TrainConfigError(
            f"early_stopping_metric {config.early_stopping_metric!r} is not computed; "
            f"valid: {', '.join(valid)}"
        )


def update_early_stopping(config: TrainConfig, p: Progress, value: float) -> str | None:
    """Count one evaluation whose watched metric is `value`. When patience runs out, mark
    `p` finished and return the message that says why; else None."""
    if config.early_stopping_patience is None:
        return None
    if _improved(config, p.best, value):
        p.best, p.bad_evals = value, 0
        return None
    p.bad_evals += 1
    if p.bad_evals < config.early_stopping_patience:
        return None
    p.finished = p.stopped_early = True
    return (
        f"early stopping at step {p.step}: {config.early_stopping_metric} has not "
        f"improved on {p.best:.4g} for {p.bad_evals} evaluations"
    )


def _improved(config: TrainConfig, best: float | None, value: float) -> bool:
    delta = config.early_stopping_min_delta
    if best is None:
        return True
    if config.early_stopping_mode == "min":
        return value < best - delta
    return value > best + delta
