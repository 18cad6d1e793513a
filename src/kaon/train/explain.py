"""Which inputs made the model decide: integrated gradients, and a heat-map of them.

Integrated gradients (Sundararajan et al., 2017) average the gradient of the output along
the straight path from a baseline (by default all zeros) to the input, times the
difference between the two. The attributions of one sample add up to the change in the
model's output from the baseline to the input, so they are in the output's own units and
can be compared across features. Captum does the work; it is imported on first use so
``import kaon.train`` stays quick, and so does matplotlib for the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["explain", "save_heatmap"]


def explain(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor | None = None,
    target: int | torch.Tensor | None = None,
    steps: int = 50,
) -> torch.Tensor:
    """Attributions of `model`'s output to each element of `inputs`, same shape as it.

    `target` picks the output to explain when the model has several (a class index, or
    one per sample); by default the predicted class, or the only output there is."""
    from captum.attr import IntegratedGradients

    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    inputs = inputs.to(device).float()
    if baseline is None:
        baseline = torch.zeros_like(inputs)
    if target is None:
        target = _default_target(model, inputs)
    attributions = IntegratedGradients(model).attribute(
        inputs, baselines=baseline.to(device), target=target, n_steps=steps
    )
    result: torch.Tensor = attributions.detach()
    return result


def _default_target(model: torch.nn.Module, inputs: torch.Tensor) -> Any:
    with torch.no_grad():
        outputs = model(inputs)
    if outputs.dim() == 1:
        return None  # one scalar per sample: nothing to choose
    if outputs.shape[-1] == 1:
        return 0  # a single output column, such as a sigmoid's probability
    return outputs.argmax(-1)


def save_heatmap(
    attributions: torch.Tensor,
    path: str | Path,
    image: torch.Tensor | None = None,
    title: str = "integrated gradients",
) -> Path:
    """Save one sample's attributions as a PNG heat-map (red for, blue against), beside
    the image itself when given. Both are squeezed to 2-D (e.g. 1x8x8 -> 8x8)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a job
    import matplotlib.pyplot as plt

    heat = attributions.detach().cpu().squeeze().numpy()
    panels = 1 if image is None else 2
    figure, axes = plt.subplots(1, panels, figsize=(3 * panels, 3), squeeze=False)
    if image is not None:
        axes[0][0].imshow(image.detach().cpu().squeeze().numpy(), cmap="gray_r")
        axes[0][0].set_title("input")
    limit = float(abs(heat).max()) or 1.0
    shown = axes[0][-1].imshow(heat, cmap="seismic", vmin=-limit, vmax=limit)
    axes[0][-1].set_title(title)
    figure.colorbar(shown, ax=axes[0][-1], fraction=0.046)
    for axis in axes[0]:
        axis.set_xticks([])
        axis.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
