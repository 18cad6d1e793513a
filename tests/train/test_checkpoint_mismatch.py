"""A checkpoint folder that holds another run's checkpoint is refused, not loaded or skipped.

Another model (parameter names or shapes) or another optimizer gets one line that names
the folder and what to change, as `CheckpointMismatchError`, from `fit()` before the
first step, with nothing loaded and nothing deleted. As a script, no torch traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kaon.train import CheckpointMismatchError, TrainConfig, TrainConfigError, Trainer
from kaon.train import checkpoint as ckpt
from tests.train.conftest import JOB_ENV, blobs, same_weights
from tests.train.test_checkpoint import Classifier, run

ROOT = Path(__file__).resolve().parents[2]
RUN_TINY = Path(__file__).with_name("run_tiny.py")
NEWEST = "step-000000016"  # `run` checkpoints steps 8, 12 and 16


def resume(out: Path, model: nn.Module, **settings: object) -> Trainer:
    """A Trainer over `out`, as `run` builds one, with `settings` changed."""
    base: dict[str, object] = {
        "loss": "bce", "optimizer": "adam", "lr": 0.01, "batch_size": 4, "epochs": 2,
        "output_dir": str(out), "tensorboard": False, "progress": False,
    }  # fmt: skip
    return Trainer(model, blobs(), config=TrainConfig(**(base | settings)))  # type: ignore[arg-type]


def checkpoints(out: Path) -> list[str]:
    return sorted(path.name for path in (out / "checkpoints").iterdir())


class TestRefused:
    def test_another_model(self, tmp_path: Path) -> None:
        run(tmp_path)
        model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointMismatchError) as refused:
            resume(tmp_path, model).fit()
        assert str(refused.value) == (
            f"checkpoint folder {tmp_path / 'checkpoints'} holds a checkpoint of another "
            f"model ({NEWEST}: it has net.0.weight, net.0.bias, net.2.weight and 1 more that "
            "this model lacks; this model has 0.weight, 0.bias, 2.weight and 1 more that it "
            "lacks); point output_dir elsewhere or delete the folder"
        )
        assert same_weights(model.state_dict(), before)  # nothing was loaded
        assert checkpoints(tmp_path) == ["step-000000008", "step-000000012", NEWEST]

    def test_same_names_other_shapes(self, tmp_path: Path) -> None:
        run(tmp_path)
        with pytest.raises(
            CheckpointMismatchError,
            match=r"another model \(step-000000016: net.0.weight has shape \(6, 2\) in it, "
            r"\(8, 2\) in this model \(and 2 more\)\)",
        ):
            resume(tmp_path, Classifier(hidden=8)).fit()

    def test_another_optimizer(self, tmp_path: Path) -> None:
        run(tmp_path)
        with pytest.raises(
            CheckpointMismatchError,
            match=r"another configuration \(step-000000016: optimizer Adam in it, SGD in this",
        ):
            resume(tmp_path, Classifier(hidden=6), optimizer="sgd").fit()

    def test_other_parameters_trained(self, tmp_path: Path) -> None:
        run(tmp_path)
        model = Classifier(hidden=6)
        model.net[0].requires_grad_(False)
        with pytest.raises(CheckpointMismatchError, match="updates 4 tensors, this run's 2"):
            resume(tmp_path, model).fit()

    def test_names_the_setting_that_chose_the_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAON_CHECKPOINT_DIR", str(tmp_path / "job"))
        run(tmp_path)
        with pytest.raises(CheckpointMismatchError, match=r"point \$KAON_CHECKPOINT_DIR else"):
            resume(tmp_path, Classifier(hidden=8)).fit()

    def test_is_a_config_error(self) -> None:
        assert issubclass(CheckpointMismatchError, TrainConfigError)


def test_a_checkpoint_from_before_the_optimizer_was_recorded_still_resumes(
    tmp_path: Path,
) -> None:
    run(tmp_path)
    root = tmp_path / "checkpoints"
    model_state, state = ckpt.load_checkpoint(root / NEWEST)
    assert state is not None and state.pop("optimizer_class") == "Adam"
    card = ckpt.read_model_card(root / NEWEST)
    ckpt.save_checkpoint(root, 16, model_state, state, card, keep=3)
    assert resume(tmp_path, Classifier(hidden=6)).fit()["step"] == 32


def test_as_a_script_one_line_and_no_torch_traceback(tmp_path: Path) -> None:
    """run_tiny.py's model is not `run`'s: the process ends with the one-line message."""
    run(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in JOB_ENV}
    done = subprocess.run(
        [sys.executable, str(RUN_TINY), "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"kaon\.train\.checkpointer\.CheckpointMismatchError: checkpoint folder \S+ holds a "
        r"checkpoint of another model \(step-000000016: [^\n]+\); point output_dir "
        r"elsewhere or delete the folder",
        last,
    ), done.stderr
    assert f"{os.sep}torch{os.sep}" not in done.stderr  # no frame of torch's
    assert "load_state_dict" not in done.stderr and "RuntimeError" not in done.stderr
    assert "resumed from" not in done.stdout and "epoch" not in done.stdout  # no step taken
    assert checkpoints(tmp_path) == ["step-000000008", "step-000000012", NEWEST]
    assert torch.load(tmp_path / "checkpoints" / NEWEST / "model.pt")  # still loadable
