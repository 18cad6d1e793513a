"""A small but complete training run, started as a real process by the tests.

It has what makes resuming hard: dropout (torch's generator), a dataset that draws from
NumPy's and Python's generators, Adam's state, a cosine schedule with warm-up, gradient
accumulation and clipping. With ``--slow`` each step sleeps a little, so a test can kill
it part-way. At the end it saves the final weights to ``<out>/final.pt``.
"""

import argparse
import os
import random
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kaon.train import TrainConfig, Trainer, seed_everything


class NoisyBlobs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed points plus noise from NumPy's and Python's global generators."""

    def __init__(self, n: int, slow: float) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()
        self.slow = slow

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slow:
            time.sleep(self.slow)
        noise = torch.from_numpy(np.random.normal(0, 0.1, 4).astype(np.float32))
        return self.x[i] + noise * random.random(), self.y[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed_everything(123)  # the model's initial weights
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    config = TrainConfig(
        loss="bce_logits", optimizer="adamw", lr=0.02, batch_size=4, epochs=args.epochs,
        grad_accum_steps=2, clip_grad_norm=1.0, schedule="cosine", warmup_steps=5,
        seed=7, output_dir=args.out, checkpoint_every_steps=args.every, keep_checkpoints=2,
        tensorboard=False,
    )  # fmt: skip
    train, val = NoisyBlobs(args.samples, args.slow), NoisyBlobs(24, 0.0)
    trainer = Trainer(model, train, val, config=config, metrics=["accuracy"])
    trainer.fit()
    torch.save(model.state_dict(), f"{args.out}/final-rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    main()
