"""The Trainer in this process: learning, repeatability, resume, accumulation, stopping,
logging. The same loop runs as real subprocesses in test_resume_process and test_ddp."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from kaon.core.jobs import EXIT_CODE_RESUME
from kaon.train import Preempted, TrainConfig, Trainer
from kaon.train.data import ResumableSampler
from kaon.train.reporting import Reporter
from kaon.train.runtime import Runtime
from tests.train.conftest import blobs, mlp, same_weights


def config(out: Path, **settings: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "loss": "bce", "optimizer": "adam", "lr": 0.01, "batch_size": 4, "epochs": 3,
        "seed": 3, "output_dir": str(out), "tensorboard": False,
    }  # fmt: skip
    return TrainConfig(**(base | settings))


def train(out: Path, model: nn.Module | None = None, **settings: Any) -> dict[str, torch.Tensor]:
    model = model or mlp()
    Trainer(model, blobs(), blobs(16, seed=1), config(out, **settings), ["accuracy"]).fit()
    return model.state_dict()


class TestFit:
    def test_learns_and_reports(self, tmp_path: Path) -> None:
        model = mlp()
        trainer = Trainer(model, blobs(), blobs(16, 1), config(tmp_path), ["accuracy"])
        result = trainer.fit()
        assert result["step"] == 48 and result["epoch"] == 3
        assert result["val_accuracy"] >= 0.9
        assert result["val_loss"] < 0.5 and result["loss"] < 0.5
        assert trainer.evaluate(blobs(16, 1)) == {
            "loss": result["val_loss"],
            "accuracy": result["val_accuracy"],
        }

    def test_same_seed_same_bits(self, tmp_path: Path) -> None:
        assert same_weights(train(tmp_path / "a"), train(tmp_path / "b"))

    def test_other_seed_other_bits(self, tmp_path: Path) -> None:
        assert not same_weights(train(tmp_path / "a"), train(tmp_path / "b", seed=4))

    def test_custom_metric(self, tmp_path: Path) -> None:
        def mean_output(outputs: torch.Tensor, targets: torch.Tensor) -> float:
            return float(outputs.mean())

        trainer = Trainer(mlp(), blobs(), blobs(8), config(tmp_path), {"mean_output": mean_output})
        assert 0 < trainer.fit()["val_mean_output"] < 1

    def test_max_steps_stops_mid_epoch(self, tmp_path: Path) -> None:
        trainer = Trainer(mlp(), blobs(), config=config(tmp_path, max_steps=7, epochs=5))
        result = trainer.fit()
        assert (result["step"], result["epoch"]) == (7, 0)

    def test_grad_accumulation_matches_a_bigger_batch(self, tmp_path: Path) -> None:
        data = TensorDataset(torch.randn(32, 2), torch.randn(32, 1))
        weights = []
        for batch, accum in [(4, 1), (2, 2)]:
            torch.manual_seed(0)
            model = nn.Linear(2, 1)
            settings = {"loss": "mse", "optimizer": "sgd", "batch_size": batch}
            cfg = config(tmp_path / str(batch), grad_accum_steps=accum, **settings)
            assert Trainer(model, data, config=cfg).fit()["step"] == 24
            weights.append(model.state_dict())
        for name in weights[0]:
            torch.testing.assert_close(weights[0][name], weights[1][name])

    def test_early_stopping(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        # val_loss falls every epoch, so watching for it to rise ("max") stops at once.
        settings = {"early_stopping_patience": 1, "early_stopping_mode": "max", "epochs": 9}
        result = Trainer(mlp(), blobs(), blobs(16, 1), config(tmp_path, **settings)).fit()
        assert result["epoch"] == 2
        assert "early stopping at step 32: val_loss has not improved" in capsys.readouterr().out

    def test_warmup_and_cosine_reach_the_optimizer(self, tmp_path: Path) -> None:
        settings = {"schedule": "cosine", "warmup_steps": 4, "log_every_steps": 1, "epochs": 1}
        trainer = Trainer(mlp(), blobs(), config=config(tmp_path, **settings))
        trainer.fit()
        lrs = [point["lr"] for point in trainer.history if "lr" in point]
        assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
        assert lrs[-1] == pytest.approx(0.001)  # min_lr_ratio 0.1 at the last step


class TestOutput:
    def test_one_line_per_epoch_off_a_terminal(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        train(tmp_path)
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("training on cpu (float32), 1 process(es): 48 steps")
        assert [line.split(" step")[0] for line in lines[1:]] == [
            "epoch 1/3",
            "epoch 2/3",
            "epoch 3/3",
        ]
        assert "val_accuracy" in lines[-1]

    def test_progress_off_is_silent(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        train(tmp_path, progress=False)
        assert capsys.readouterr().out == ""

    def test_tensorboard_event_files(self, tmp_path: Path) -> None:
        train(tmp_path, tensorboard=True)
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    def test_history_has_each_epoch(self, tmp_path: Path) -> None:
        trainer = Trainer(mlp(), blobs(), blobs(16, 1), config(tmp_path), ["accuracy"])
        trainer.fit()
        assert [p["epoch"] for p in trainer.history] == [1.0, 2.0, 3.0]
        assert {"step", "loss", "val_loss", "val_accuracy"} <= trainer.history[0].keys()


class TestResumeInProcess:
    def test_more_epochs_continue_from_the_last_checkpoint(self, tmp_path: Path) -> None:
        straight = train(tmp_path / "straight", epochs=4)
        train(tmp_path / "split", epochs=2)
        resumed = train(tmp_path / "split", model=mlp(seed=9), epochs=4)  # other init: loaded
        assert same_weights(straight, resumed)

    def test_mid_epoch_position(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        straight = train(tmp_path / "straight")
        train(tmp_path / "split", max_steps=7)
        resumed = train(tmp_path / "split")
        assert "resumed from step-000000007: step 7, epoch 1, batch 7" in capsys.readouterr().out
        assert same_weights(straight, resumed)

    def test_resume_false_starts_over(self, tmp_path: Path) -> None:
        train(tmp_path, max_steps=7)
        trainer = Trainer(mlp(), blobs(), config=config(tmp_path, resume=False, epochs=1))
        assert trainer.fit()["step"] == 16


class _SigtermAt(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Blobs that send this process SIGTERM when sample number `at` is read."""

    def __init__(self, at: int) -> None:
        self.data, self.reads, self.at = blobs(), 0, at

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        x, y = self.data[i]
        return x, y


class TestSigterm:
    def test_checkpoint_then_exit_75_then_resume(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        straight = train(tmp_path / "straight")
        out = tmp_path / "stopped"
        data = _SigtermAt(at=4 + 30)  # the dry run reads 4; then mid-way through step 8
        trainer = Trainer(mlp(), data, blobs(16, 1), config(out), ["accuracy"])
        with pytest.raises(Preempted) as stopped:
            trainer.fit()
        assert stopped.value.code == EXIT_CODE_RESUME == 75
        assert stopped.value.step == 8  # the step in flight finished first
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000000008"]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
        assert same_weights(straight, train(out))
        assert "SIGTERM: stopped after step 8" in capsys.readouterr().out


class TestSampler:
    @pytest.mark.parametrize(("world", "rank"), [(1, 0), (2, 1)])
    def test_skip_resumes_the_same_order(self, world: int, rank: int) -> None:
        runtime = Runtime(torch.device("cpu"), None, rank=rank, world_size=world)
        sampler = ResumableSampler(range(10), runtime, seed=5)
        sampler.set_position(epoch=2, skip=0)
        full = list(sampler)
        sampler.set_position(epoch=2, skip=3)
        assert list(sampler) == full[3:] and len(sampler) == len(full) - 3
        sampler.set_position(epoch=3, skip=0)
        assert list(sampler) != full


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as sys.stdout does in an interactive shell."""

    def isatty(self) -> bool:
        return True


class TestTerminalAndTimers:
    def test_progress_bar_on_a_terminal(self) -> None:
        terminal = _Terminal()
        reporter = Reporter(True, "unused", tensorboard=False, progress=True, stream=terminal)
        reporter.bar(0, 3, 5, 10, lambda: 0.25)
        reporter.message("epoch 1/3 step 10 loss 0.25")
        assert terminal.getvalue() == (
            "\repoch 1/3 [############............] 5/10 loss 0.25"
            "\r\033[Kepoch 1/3 step 10 loss 0.25\n"
        )

    def test_checkpoint_every_seconds(self, tmp_path: Path) -> None:
        train(tmp_path, epochs=1, checkpoint_every_seconds=1e-9, keep_checkpoints=2)
        names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
        assert names == ["step-000000015", "step-000000016"]  # one a step, the last 2 kept
