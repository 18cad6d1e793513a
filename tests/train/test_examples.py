"""Every example and benchmark runs at a tiny size. The seed example runs as the real
command a Kaon job runs; the others run as __main__ in this process, where torch is
already imported, so each costs only its own work."""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from kaon.train import load_model, read_model_card
from tests.train.conftest import JOB_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPT_DIRS = (str(EXAMPLES), str(ROOT / "benchmarks"))


def run_script(path: Path, *args: str) -> str:
    """`python path args...` in this process; returns what it printed. The script's own
    modules (each example has a `model`) are forgotten afterwards so the next can load."""
    saved_argv, saved_path, saved_modules = sys.argv[:], sys.path[:], set(sys.modules)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        for name in set(sys.modules) - saved_modules:
            if str(getattr(sys.modules[name], "__file__", "")).startswith(SCRIPT_DIRS):
                del sys.modules[name]
    return out.getvalue()


class TestBinaryClassifier:
    @pytest.mark.slow
    def test_python_train_py(self, tmp_path: Path) -> None:
        folder = EXAMPLES / "binary_classifier"
        env = {k: v for k, v in os.environ.items() if k not in JOB_ENV}
        done = subprocess.run(
            [sys.executable, "train.py", "--out", str(tmp_path)],
            cwd=folder, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        accuracy = re.search(r"^test accuracy: (\d\.\d\d)$", done.stdout, re.MULTILINE)
        assert accuracy and float(accuracy.group(1)) >= 0.9, done.stdout
        assert "epoch 10/10 step 250 loss" in done.stdout
        assert "mean |attribution| per feature (integrated gradients): x0 " in done.stdout

        # What a deployment does: rebuild the model from the card, on raw inputs.
        assert read_model_card(tmp_path / "checkpoints")["factory"] == "model:BinaryClassifier"
        sys.path.insert(0, str(folder))
        try:
            model = load_model(tmp_path / "checkpoints")
        finally:
            sys.path.remove(str(folder))
            sys.modules.pop("model", None)
        probabilities = model(torch.tensor([[-1.5, -1.5], [1.5, 1.5]])).flatten()
        assert probabilities[0] < 0.5 < probabilities[1]


@pytest.mark.slow  # loads scikit-learn, Captum and matplotlib on first use
def test_digits_cnn(tmp_path: Path) -> None:
    args = ["--epochs", "1", "--limit", "300", "--channels", "4", "--explain"]
    printed = run_script(EXAMPLES / "digits_cnn" / "train.py", *args, "--out", str(tmp_path))
    assert re.search(r"^test accuracy: \d\.\d{4}$", printed, re.MULTILINE)
    assert (tmp_path / "explain_digit.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # loads scikit-learn and Captum on first use
def test_examples_with_default_folders_keep_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's first minutes: one example, then another, from the same folder and with
    no --out. Each writes to out/<example>/, so the second does not try to resume the
    first's checkpoint, and running the first again resumes its own."""
    monkeypatch.chdir(tmp_path)
    binary = EXAMPLES / "binary_classifier" / "train.py"
    run_script(binary, "--epochs", "1")
    digits = ["--epochs", "1", "--limit", "300", "--channels", "4"]
    assert "test accuracy: " in run_script(EXAMPLES / "digits_cnn" / "train.py", *digits)
    assert "resumed from step-000000025: step 25, epoch 2" in run_script(binary, "--epochs", "1")
    out = tmp_path / "out"
    assert read_model_card(out / "binary_classifier" / "checkpoints")["input_shape"] == [2]
    assert read_model_card(out / "digits_cnn" / "checkpoints")["input_shape"] == [1, 8, 8]


def test_char_lm(tmp_path: Path) -> None:
    args = ["--epochs", "3", "--chars", "3000", "--block", "32", "--dim", "32", "--layers", "1"]
    printed = run_script(
        EXAMPLES / "char_lm" / "train.py", *args, "--sample", "20", "--out", str(tmp_path)
    )
    losses = printed.split("validation loss by epoch: ")[1].splitlines()[0].split(" -> ")
    assert len(losses) == 3 and float(losses[-1]) < float(losses[0])
    assert "sample:\n" in printed


def test_gpt_tiny(tmp_path: Path) -> None:
    args = ["--config", "tiny", "--steps", "4", "--log-every", "2", "--out", str(tmp_path)]
    printed = run_script(EXAMPLES / "gpt" / "train.py", *args)
    assert re.search(r"^tiny: 0\.\dM parameters, [\d,]+ tokens/s$", printed, re.MULTILINE)


class TestBenchmarks:
    def test_train_cpu(self) -> None:
        result = json.loads(run_script(ROOT / "benchmarks" / "train_cpu.py", "--quick", "--json"))
        assert result["steps"] == 50 and result["ratio"] > 0
        assert len(result["runs"]["plain"]) == len(result["runs"]["trainer"]) == 3

    def test_train_gpu_tiny_on_cpu(self) -> None:
        result = json.loads(run_script(ROOT / "benchmarks" / "train_gpu.py", "--tiny", "--json"))
        (tiny,) = result["models"]
        assert tiny["model"] == "tiny" and tiny["ratio"] > 0 and 0 < tiny["kaon_mfu"]
