"""Integrated gradients: shape, completeness, the default target, and the heat-map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import kaon
from kaon.train.explain import explain, save_heatmap


def test_attributions_add_up_to_the_output_change() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    inputs = torch.randn(5, 3)
    attributions = explain(model, inputs, steps=200)
    assert attributions.shape == inputs.shape
    change = (model(inputs) - model(torch.zeros_like(inputs))).flatten()
    torch.testing.assert_close(attributions.sum(1), change.detach(), atol=1e-3, rtol=0)


def test_default_target_is_the_predicted_class() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs = torch.randn(6, 4)
    predicted = model(inputs).argmax(1)
    torch.testing.assert_close(explain(model, inputs), explain(model, inputs, target=predicted))


def test_heatmap_png(tmp_path: Path) -> None:
    image = torch.rand(1, 8, 8)
    path = save_heatmap(torch.randn(1, 8, 8), tmp_path / "sub" / "h.png", image=image)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_kaon_explain_is_this_function() -> None:
    assert kaon.explain is explain


def test_import_kaon_stays_light() -> None:
    code = (
        "import kaon, sys; print(sorted(m for m in ('torch', 'kaon.train') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
