"""Bad input fails in the Trainer's constructor, before any step, naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from kaon.train import TrainConfig, TrainConfigError, Trainer
from tests.train.conftest import blobs, mlp


def config(tmp_path: Path, **settings: Any) -> TrainConfig:
    base: dict[str, Any] = {"loss": "bce", "batch_size": 4, "output_dir": str(tmp_path)}
    return TrainConfig(**(base | settings))


def classes(n: int = 12, k: int = 3) -> TensorDataset:
    return TensorDataset(torch.randn(n, 2), torch.arange(n) % k)


class _Stream(IterableDataset[Any]):
    def __iter__(self) -> Any:
        return iter([])


class TestBadInput:
    def test_wrong_output_shape_for_the_loss(self, tmp_path: Path) -> None:
        model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid())  # 3 outputs, 1 target each
        with pytest.raises(TrainConfigError, match=r"returned shape \(4, 3\) but the targets"):
            Trainer(model, blobs(), config=config(tmp_path))

    def test_model_that_cannot_take_the_input(self, tmp_path: Path) -> None:
        model = nn.Sequential(nn.Linear(5, 1), nn.Sigmoid())  # expects 5 features, gets 2
        with pytest.raises(TrainConfigError, match=r"the model failed on one batch .*\(4, 2\)"):
            Trainer(model, blobs(), config=config(tmp_path))

    def test_empty_dataset(self, tmp_path: Path) -> None:
        empty = TensorDataset(torch.zeros(0, 2), torch.zeros(0, 1))
        with pytest.raises(TrainConfigError, match=r"train_data is empty \(0 samples\)"):
            Trainer(mlp(), empty, config=config(tmp_path))

    def test_empty_validation_set(self, tmp_path: Path) -> None:
        empty = TensorDataset(torch.zeros(0, 2), torch.zeros(0, 1))
        with pytest.raises(TrainConfigError, match="val_data is empty"):
            Trainer(mlp(), blobs(), empty, config=config(tmp_path))

    def test_batch_larger_than_dataset(self, tmp_path: Path) -> None:
        with pytest.raises(
            TrainConfigError, match="batch_size 64 is larger than the training set: 10 samples"
        ):
            Trainer(mlp(), blobs(10), config=config(tmp_path, batch_size=64))

    def test_learning_rate_not_positive(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match="lr must be a positive number, got 0"):
            Trainer(mlp(), blobs(), config=config(tmp_path, lr=0))

    def test_unknown_loss_lists_valid_ones(self, tmp_path: Path) -> None:
        with pytest.raises(
            TrainConfigError, match="valid losses: bce, bce_logits, cross_entropy, mse"
        ):
            Trainer(mlp(), blobs(), config=config(tmp_path, loss="nll"))

    def test_unknown_optimizer_lists_valid_ones(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match="valid optimizers: adam, adamw, sgd"):
            Trainer(mlp(), blobs(), config=config(tmp_path, optimizer="rmsprop"))

    def test_bce_on_logits(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match="use loss 'bce_logits'"):
            Trainer(mlp(sigmoid=False), blobs(), config=config(tmp_path))

    def test_cross_entropy_shape(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match=r"outputs of shape targets \+ \(classes,\)"):
            Trainer(_Flat(), classes(), config=config(tmp_path, loss="cross_entropy"))

    def test_cross_entropy_class_out_of_range(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match=r"target class is outside \[0, 2\)"):
            Trainer(nn.Linear(2, 2), classes(k=3), config=config(tmp_path, loss="cross_entropy"))

    def test_samples_must_be_pairs(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match=r"\(input, target\) pair"):
            Trainer(mlp(), TensorDataset(torch.randn(8, 2)), config=config(tmp_path))

    def test_iterable_dataset(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match="must be a map-style dataset"):
            Trainer(mlp(), _Stream(), config=config(tmp_path))

    def test_unknown_metric(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match="unknown metric 'f1'"):
            Trainer(mlp(), blobs(), config=config(tmp_path), metrics=["f1"])

    def test_early_stopping_needs_validation(self, tmp_path: Path) -> None:
        with pytest.raises(TrainConfigError, match="early stopping watches a validation metric"):
            Trainer(mlp(), blobs(), config=config(tmp_path, early_stopping_patience=2))

    @pytest.mark.parametrize("patience", [2, None])
    def test_early_stopping_metric_must_exist(self, tmp_path: Path, patience: int | None) -> None:
        settings = {"early_stopping_patience": patience, "early_stopping_metric": "val_f1"}
        with pytest.raises(TrainConfigError, match="valid: val_loss, val_accuracy"):
            Trainer(mlp(), blobs(), blobs(8), config(tmp_path, **settings), ["accuracy"])

    def test_nothing_was_trained_or_written(self, tmp_path: Path) -> None:
        model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(TrainConfigError):
            Trainer(model, blobs(), config=config(tmp_path))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert not (tmp_path / "checkpoints").exists()


class _Flat(nn.Module):
    """Returns one score per sample: a shape cross-entropy cannot use."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)
