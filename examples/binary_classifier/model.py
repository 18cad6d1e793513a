"""The 2-5-1 classifier, in its own module so a serving layer can import it by name."""

import torch
from torch import nn


class BinaryClassifier(nn.Module):
    """2 inputs -> 5 hidden (ReLU) -> 1 output (sigmoid): the probability of class 1.

    The input normalisation lives in the model as buffers, saved with the weights, so a
    predictor built from a checkpoint takes raw inputs, just like training did."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("std", torch.ones(2))
        self.net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1), nn.Sigmoid())

    def fit_normalizer(self, inputs: torch.Tensor) -> None:
        self.mean.copy_(inputs.mean(0))
        self.std.copy_(inputs.std(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
