"""Checkpoints on disk: atomic layout, keep-last-K, corrupt ones skipped, model cards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from kaon.train import (
    CheckpointWarning,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    load_model,
    predict,
    read_model_card,
)
from tests.train.conftest import blobs


class Classifier(nn.Module):
    """Importable by name, so the model card can name it as the factory."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def run(out: Path, epochs: int = 1, **settings: object) -> tuple[Trainer, nn.Module]:
    torch.manual_seed(0)
    model = Classifier(hidden=6)
    config = TrainConfig(
        loss="bce", optimizer="adam", lr=0.01, batch_size=4, epochs=epochs,
        output_dir=str(out), checkpoint_every_steps=4, keep_checkpoints=3, tensorboard=False,
        progress=False, **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    trainer = Trainer(model, blobs(), config=config, model_kwargs={"hidden": 6})
    trainer.fit()
    return trainer, model


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


class TestLayout:
    def test_files_and_manifest(self, tmp_path: Path) -> None:
        run(tmp_path)
        root = tmp_path / "checkpoints"
        assert names(root) == ["step-000000008", "step-000000012", "step-000000016"]
        newest = root / "step-000000016"
        assert names(newest) == ["manifest.json", "model.pt", "model_card.json", "train_state.pt"]
        manifest = json.loads((newest / "manifest.json").read_text())
        assert manifest["format"] == 1 and manifest["step"] == 16
        assert manifest["files"]["model.pt"]["bytes"] == (newest / "model.pt").stat().st_size

    def test_model_card(self, tmp_path: Path) -> None:
        run(tmp_path)
        card = read_model_card(tmp_path / "checkpoints")
        assert card["factory"] == "tests.train.test_checkpoint:Classifier"
        assert card["factory_kwargs"] == {"hidden": 6}
        assert (card["input_shape"], card["input_dtype"]) == ([2], "float32")
        assert (card["output_shape"], card["loss"], card["step"]) == ([1], "bce", 16)

    def test_kaon_checkpoint_dir_wins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAON_CHECKPOINT_DIR", str(tmp_path / "job"))
        trainer, _ = run(tmp_path / "out", checkpoint_dir=str(tmp_path / "mine"))
        assert trainer.checkpoint_dir == tmp_path / "job"
        assert names(tmp_path / "job")[-1] == "step-000000016"
        assert not (tmp_path / "mine").exists()

    def test_a_fresh_run_removes_the_replaced_runs_checkpoints(self, tmp_path: Path) -> None:
        run(tmp_path, epochs=2)  # up to step 32
        run(tmp_path, resume=False, max_steps=8)
        assert names(tmp_path / "checkpoints") == ["step-000000004", "step-000000008"]

    def test_leftover_temporary_folders_are_removed(self, tmp_path: Path) -> None:
        scratch = tmp_path / "checkpoints" / ".tmp-step-000000099-123"
        scratch.mkdir(parents=True)
        (scratch / "model.pt").write_bytes(b"half")
        run(tmp_path)
        assert not scratch.exists()


class TestSkippingBadCheckpoints:
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        run(tmp_path)
        return tmp_path / "checkpoints"

    def test_flipped_bits(self, root: Path) -> None:
        weights = root / "step-000000016" / "model.pt"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        with pytest.warns(CheckpointWarning, match="step-000000016: model.pt: contents do not"):
            assert latest_checkpoint(root).name == "step-000000012"

    def test_truncated_file(self, root: Path) -> None:
        state = root / "step-000000016" / "train_state.pt"
        state.write_bytes(state.read_bytes()[:100])
        with pytest.warns(
            CheckpointWarning, match=r"train_state.pt: 100 bytes, the manifest says"
        ):
            assert latest_checkpoint(root).name == "step-000000012"

    def test_half_written_without_manifest(self, root: Path) -> None:
        half = root / "step-000000020"
        shutil.copytree(root / "step-000000016", half)
        (half / "manifest.json").unlink()
        with pytest.warns(CheckpointWarning, match="step-000000020: no manifest.json"):
            assert latest_checkpoint(root).name == "step-000000016"

    def test_resume_skips_to_the_newest_good_one(self, root: Path) -> None:
        (root / "step-000000016" / "model_card.json").write_text("{}")
        (root / "step-000000012" / "manifest.json").write_text("{not json")
        torch.manual_seed(0)
        config = TrainConfig(loss="bce", optimizer="adam", batch_size=4, epochs=2,
                             output_dir=str(root.parent), tensorboard=False,
                             progress=False)  # fmt: skip
        trainer = Trainer(Classifier(hidden=6), blobs(), config=config)
        with pytest.warns(CheckpointWarning) as caught:
            progress = trainer._start()
        assert progress.step == 8
        assert [str(w.message).split(":")[0] for w in caught] == [
            "skipping checkpoint step-000000016",
            "skipping checkpoint step-000000012",
        ]

    def test_nothing_valid(self, root: Path) -> None:
        for folder in root.iterdir():
            (folder / "manifest.json").unlink()
        with pytest.warns(CheckpointWarning), pytest.raises(FileNotFoundError, match="no valid"):
            latest_checkpoint(root)


class TestLoadModel:
    def test_rebuilds_from_the_card(self, tmp_path: Path) -> None:
        _, trained = run(tmp_path)
        model = load_model(tmp_path / "checkpoints")
        assert isinstance(model, Classifier) and not model.training
        x = torch.randn(5, 2)
        assert torch.equal(predict(model, x), predict(trained, x))

    def test_into_a_given_model(self, tmp_path: Path) -> None:
        run(tmp_path)
        model = load_model(tmp_path / "checkpoints" / "step-000000008", Classifier(hidden=6))
        assert predict(model, torch.zeros(1, 2)).shape == (1, 1)

    def test_a_model_without_factory_needs_the_model(self, tmp_path: Path) -> None:
        config = TrainConfig(loss="mse", batch_size=4, output_dir=str(tmp_path), progress=False,
                             tensorboard=False)  # fmt: skip
        Trainer(nn.Sequential(nn.Linear(2, 1)), blobs(), config=config).fit()
        with pytest.raises(ValueError, match="names no factory; pass the model"):
            load_model(tmp_path / "checkpoints")
