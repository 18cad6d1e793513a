"""TrainConfig rejects bad settings at construction; the LR schedule is a pure function."""

from __future__ import annotations

import math

import pytest

from kaon.train import TrainConfig, TrainConfigError
from kaon.train.config import lr_at


class TestTrainConfig:
    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"lr": 0.0}, "lr must be a positive number, got 0.0"),
            ({"lr": -0.1}, "lr must be a positive number"),
            ({"lr": math.nan}, "lr must be a positive number"),
            (
                {"loss": "hinge"},
                "unknown loss 'hinge'; valid losses: bce, bce_logits, cross_entropy, mse",
            ),
            (
                {"optimizer": "lamb"},
                "unknown optimizer 'lamb'; valid optimizers: adam, adamw, sgd",
            ),
            ({"schedule": "step"}, "valid schedules: constant, cosine"),
            ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
            ({"epochs": 0}, "epochs must be a positive integer"),
            ({"grad_accum_steps": 0}, "grad_accum_steps must be a positive integer"),
            ({"max_steps": 0}, "max_steps must be a positive integer"),
            ({"clip_grad_norm": 0.0}, "clip_grad_norm must be > 0"),
            ({"precision": "fp8"}, "unknown precision 'fp8'"),
            ({"early_stopping_mode": "up"}, "early_stopping_mode must be 'min' or 'max'"),
            ({"checkpoint_every_seconds": 0}, "checkpoint_every_seconds must be > 0"),
        ],
    )
    def test_rejects(self, settings: dict[str, object], message: str) -> None:
        with pytest.raises(TrainConfigError, match=message.replace("(", r"\(")):
            TrainConfig(**settings)  # type: ignore[arg-type]

    def test_is_a_value_error(self) -> None:
        assert issubclass(TrainConfigError, ValueError)

    def test_accepts_a_loss_function(self) -> None:
        assert TrainConfig(loss=lambda out, target: (out - target).abs().mean())


class TestSchedule:
    @pytest.mark.parametrize(
        ("step", "expected"),
        [(0, 0.25), (3, 1.0), (4, 1.0), (14, 0.55), (24, 0.1), (99, 0.1)],
    )
    def test_warmup_then_cosine(self, step: int, expected: float) -> None:
        config = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
        assert lr_at(config, step, total_steps=25) == pytest.approx(expected)

    def test_constant_after_warmup(self) -> None:
        config = TrainConfig(lr=0.5, warmup_steps=2)
        assert [lr_at(config, s, 10) for s in range(4)] == [0.25, 0.5, 0.5, 0.5]
